#!/usr/bin/env bash
# The whole test suite: formatting, lints and API docs (warnings are errors), then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# `memvirt record`'s end-to-end test records a real program under valgrind (Debian package
# `valgrind`): install it when it is missing and this machine allows (root, or password-less
# sudo, with apt-get). Where it cannot be installed that test says so and skips; wherever
# valgrind runs it is required (MEMVIRT_REQUIRE_VALGRIND).
if ! command -v valgrind >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then as_root=(); else as_root=(sudo -n); fi
        echo "installing valgrind (apt-get) for the trace tests" >&2
        { "${as_root[@]}" apt-get update -qq \
            && DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq valgrind; } \
            >/dev/null 2>&1 || echo "warning: could not install valgrind" >&2
    else
        echo "note: no apt-get to install valgrind: the recording test will skip" >&2
    fi
fi
if command -v valgrind >/dev/null 2>&1; then
    export MEMVIRT_REQUIRE_VALGRIND=1
fi
# The full-system tests boot real riscv64 and x86-64 Linux guests under QEMU with memvirt's
# plugin: the guest kit script installs QEMU 10/OpenSBI (bookworm-backports) and the compilers
# and fetches the kernels and busybox. Where that cannot be done the test says so and skips;
# wherever the kit is in place it is required (MEMVIRT_REQUIRE_GUEST).
if scripts/guest-kit.sh fetch >/dev/null 2>/tmp/memvirt-guest-kit.log; then
    export MEMVIRT_REQUIRE_GUEST=1
else
    echo "warning: the guest kit could not be installed (see /tmp/memvirt-guest-kit.log): the full-system test will skip" >&2
fi
# `memvirt experiment submit`'s test runs a job array on a one-node Slurm cluster it starts on
# localhost (Debian packages `slurm-wlm` and `munge`, installed here). Where they cannot be
# installed that test says so and skips; wherever they are, it is required (MEMVIRT_REQUIRE_SLURM).
if scripts/slurm-cluster.sh install; then
    export MEMVIRT_REQUIRE_SLURM=1
else
    echo "warning: Slurm could not be installed: the job-array test will skip" >&2
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Broken or private intra-doc links are errors too (the API docs are part of the deliverable).
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked --quiet
# The QEMU plugin (a workspace member) is built here so the full-system test finds it.
cargo build --release --locked -p memvirt-qemu-plugin
cargo test --release --locked
