#!/usr/bin/env bash
# The guest kit for full-system runs (issue 18): QEMU 10 (and OpenSBI) from Debian's
# bookworm-backports, and unmodified Debian kernels and busybox for riscv64 and x86_64,
# downloaded as .deb files and extracted (never installed), cached under $MEMVIRT_KIT
# (default ${XDG_CACHE_HOME:-$HOME/.cache}/memvirt/guest-kit), one directory per ARCH.
#
#   scripts/guest-kit.sh fetch [ARCH|all]   install QEMU, cpio, the compilers; fetch the
#                                           kernels and busybox (default: all)
#   scripts/guest-kit.sh initramfs ARCH OUT INIT [FILE...]
#                                     an initramfs: busybox, INIT as /init, each FILE in /bin
#   scripts/guest-kit.sh smoke [ARCH]       boot the kernel to a tiny init and check it ran
#   scripts/guest-kit.sh record ARCH OUT PAGING TIMEOUT CMD...
#                                     boot the guest with memvirt's QEMU plugin, run CMD (a
#                                     shell command line in the guest, between markers 100 and
#                                     101) and write the full-system trace OUT; PAGING is sv39,
#                                     sv48 or sv57 (riscv64) or 4level (x86_64); the console
#                                     goes to OUT.console
#
# ARCH is riscv64 (Debian trixie's kernel under qemu-system-riscv64 -machine virt, OpenSBI) or
# x86_64 (Debian bookworm's amd64 kernel, its vmlinux booted through its PVH entry under
# qemu-system-x86_64 -cpu qemu64, no KASLR). The archive's address is read from this machine's
# apt sources, never written here. The temporary riscv64 source and architecture are removed
# again whatever happens.
set -euo pipefail

KIT=${MEMVIRT_KIT:-${XDG_CACHE_HOME:-$HOME/.cache}/memvirt/guest-kit}
ARCH=riscv64
ARCH_DIR=$KIT/$ARCH
FIRMWARE=/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin
BACKPORTS=/etc/apt/sources.list.d/memvirt-bookworm-backports.sources
FOREIGN=/etc/apt/sources.list.d/memvirt-trixie-riscv64.sources

die() { echo "guest-kit: $*" >&2; exit 1; }

if [ "$(id -u)" = 0 ]; then as_root=(); else as_root=(sudo -n); fi

# The first URI of the machine's Debian sources (deb822 or one-line format).
archive_uri() {
    local uri=""
    if [ -r /etc/apt/sources.list.d/debian.sources ]; then
        uri=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$uri" ] && [ -r /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ { print $2; exit }' /etc/apt/sources.list)
    fi
    [ -n "$uri" ] || die "no Debian archive in this machine's apt sources"
    echo "$uri"
}

source_file() { # FILE SUITE [ARCH]
    local arch_line=""
    [ -n "${3:-}" ] && arch_line="Architectures: $3"
    printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\n%s\nSigned-By: %s\n' \
        "$(archive_uri)" "$2" "$arch_line" /usr/share/keyrings/debian-archive-keyring.gpg |
        grep -v '^$' | "${as_root[@]}" tee "$1" >/dev/null
}

# Selects ARCH (riscv64 or x86_64) for what follows.
use_arch() {
    case $1 in
        riscv64 | x86_64) ARCH=$1 ;;
        *) die "architecture $1: give riscv64 or x86_64" ;;
    esac
    ARCH_DIR=$KIT/$ARCH
}

install_host_tools() {
    local qemu cc backported
    if [ "$ARCH" = riscv64 ]; then
        qemu=qemu-system-riscv64 cc=riscv64-linux-gnu-gcc backported="qemu-system-riscv opensbi"
        if command -v $qemu >/dev/null && [ -r "$FIRMWARE" ] && command -v cpio >/dev/null \
            && command -v $cc >/dev/null; then
            return
        fi
    else
        qemu=qemu-system-x86_64 cc=gcc backported=qemu-system-x86
        if command -v $qemu >/dev/null && command -v cpio >/dev/null && command -v $cc >/dev/null \
            && command -v xz >/dev/null && [ -e /usr/lib/x86_64-linux-gnu/libc.a ]; then
            return
        fi
    fi
    [ -e "$BACKPORTS" ] || source_file "$BACKPORTS" bookworm-backports
    echo "guest-kit: installing QEMU 10 ($backported), cpio and the $ARCH compiler" >&2
    "${as_root[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends \
        -t bookworm-backports $backported >/dev/null
    if [ "$ARCH" = riscv64 ]; then
        # The command is riscv64-linux-gnu-gcc; Debian's package is gcc-riscv64-linux-gnu, and the
        # static guest programs need the cross C library too.
        DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq cpio \
            gcc-riscv64-linux-gnu libc6-dev-riscv64-cross >/dev/null
    else
        DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends \
            cpio gcc libc6-dev xz-utils zstd >/dev/null
    fi
}

remove_foreign() {
    "${as_root[@]}" rm -f "$FOREIGN"
    "${as_root[@]}" apt-get update -qq || true
    "${as_root[@]}" dpkg --remove-architecture riscv64 2>/dev/null || true
}

fetch_guest() {
    if [ -r "$ARCH_DIR/kernel" ] && [ -x "$ARCH_DIR/busybox" ]; then
        return
    fi
    mkdir -p "$ARCH_DIR"
    if [ "$ARCH" = x86_64 ]; then
        fetch_x86_64
        return
    fi
    local work
    work=$(mktemp -d)
    trap 'remove_foreign; rm -rf "$work"' RETURN
    source_file "$FOREIGN" trixie riscv64
    "${as_root[@]}" dpkg --add-architecture riscv64
    "${as_root[@]}" apt-get update -qq
    local kernel
    kernel=$(apt-cache search --names-only '^linux-image-[0-9.]+\+deb[0-9]+-riscv64$' |
        awk '{ print $1 }' | sort -V | tail -n 1)
    [ -n "$kernel" ] || die "no riscv64 kernel package in trixie"
    echo "guest-kit: downloading $kernel and busybox-static for riscv64" >&2
    (cd "$work" && apt-get download -qq "$kernel:riscv64" busybox-static:riscv64 2>/dev/null)
    dpkg-deb -x "$work"/linux-image-*.deb "$work/k"
    dpkg-deb -x "$work"/busybox-static_*.deb "$work/b"
    cp "$work"/k/boot/vmlinux-* "$ARCH_DIR/kernel"
    cp "$work"/k/boot/config-* "$ARCH_DIR/kernel.config"
    cp "$work/b/usr/bin/busybox" "$ARCH_DIR/busybox"
    echo "$kernel" >"$ARCH_DIR/kernel.package"
}

# Debian's own amd64 kernel and busybox (the machine's architecture: no foreign source). QEMU
# boots the uncompressed vmlinux through its PVH entry, which skips the decompressor (4x fewer
# recorded instructions); vmlinux is cut out of the bzImage at its xz (or zstd) stream.
fetch_x86_64() {
    local work
    work=$(mktemp -d)
    trap 'rm -rf "$work"; trap - RETURN' RETURN
    local kernel
    kernel=$(apt-cache search --names-only '^linux-image-[0-9.]+-[0-9]+-amd64$' |
        awk '{ print $1 }' | sort -V | tail -n 1)
    [ -n "$kernel" ] || die "no amd64 kernel package in this machine's apt sources"
    echo "guest-kit: downloading $kernel and busybox-static for amd64" >&2
    (cd "$work" && apt-get download -qq "$kernel" busybox-static 2>/dev/null)
    dpkg-deb -x "$work"/linux-image-*.deb "$work/k"
    dpkg-deb -x "$work"/busybox-static_*.deb "$work/b"
    local image offset
    image=$(ls "$work"/k/boot/vmlinuz-*)
    offset=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$image" | head -n 1 | cut -d: -f1 || true)
    if [ -n "$offset" ]; then
        tail -c +$((offset + 1)) "$image" | xz -dc >"$work/vmlinux" 2>/dev/null || true
    else
        offset=$(LC_ALL=C grep -obUaP '\x28\xb5\x2f\xfd' "$image" | head -n 1 | cut -d: -f1 || true)
        [ -n "$offset" ] || die "$image: no xz or zstd stream to extract vmlinux from"
        tail -c +$((offset + 1)) "$image" | zstd -dcq >"$work/vmlinux" 2>/dev/null || true
    fi
    [ "$(head -c 4 "$work/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ] ||
        die "$image: the extracted vmlinux is not an ELF file"
    cp "$work/vmlinux" "$ARCH_DIR/kernel"
    cp "$work"/k/boot/config-* "$ARCH_DIR/kernel.config"
    local bb
    for bb in "$work/b/bin/busybox" "$work/b/usr/bin/busybox" ""; do [ -x "$bb" ] && break; done
    [ -n "$bb" ] || die "busybox-static for amd64 has no bin/busybox"
    cp "$bb" "$ARCH_DIR/busybox"
    echo "$kernel" >"$ARCH_DIR/kernel.package"
}

initramfs() { # OUT INIT [FILE...]
    [ $# -ge 2 ] || die "usage: guest-kit.sh initramfs OUT INIT [FILE...]"
    local out=$1 init=$2
    shift 2
    local root
    root=$(mktemp -d)
    mkdir -p "$root"/{bin,proc,sys,dev,tmp}
    cp "$ARCH_DIR/busybox" "$root/bin/busybox"
    for applet in sh mount echo cat ls poweroff sleep true; do ln -s busybox "$root/bin/$applet"; done
    cp "$init" "$root/init"
    chmod +x "$root/init"
    for f in "$@"; do cp "$f" "$root/bin/"; done
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out"
    rm -rf "$root"
}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Where cargo builds: CARGO_TARGET_DIR if set (relative to the working directory, as cargo takes
# it), else the repository's target/.
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$PWD/$TARGET_DIR ;; esac
PLUGIN=$TARGET_DIR/release/libmemvirt_qemu_plugin.so

# memvirt's QEMU plugin, built if missing or older than its sources.
build_plugin() {
    if [ ! -e "$PLUGIN" ] || [ -n "$(find "$REPO/qemu-plugin" "$REPO/src/trace" -newer "$PLUGIN" -name '*.rs' | head -n 1)" ]; then
        echo "guest-kit: building memvirt's QEMU plugin" >&2
        cargo build --quiet --release --manifest-path "$REPO/Cargo.toml" -p memvirt-qemu-plugin
    fi
}

# The guest programs of guest/*.c, static riscv64 binaries, rebuilt when their source changes.
build_programs() {
    mkdir -p "$ARCH_DIR/bin"
    local c out
    local cc=gcc
    [ "$ARCH" = riscv64 ] && cc=riscv64-linux-gnu-gcc
    for c in "$REPO"/guest/*.c; do
        out=$ARCH_DIR/bin/$(basename "$c" .c)
        if [ ! -e "$out" ] || [ "$c" -nt "$out" ] || [ "$REPO/guest/mark.h" -nt "$out" ]; then
            $cc -static -O2 -I"$REPO/guest" -o "$out" "$c"
        fi
    done
}

record() { # OUT PAGING TIMEOUT CMD...
    [ $# -ge 4 ] || die "usage: guest-kit.sh record ARCH OUT PAGING TIMEOUT CMD..."
    local out=$1 paging=$2 limit=$3
    shift 3
    local levels
    case $ARCH:$paging in
        riscv64:sv39) levels=no4lvl ;;
        riscv64:sv48) levels=no5lvl ;;
        riscv64:sv57) levels="" ;;
        x86_64:4level) levels="" ;;
        riscv64:*) die "paging $paging: give sv39, sv48 or sv57 for riscv64" ;;
        *) die "paging $paging: x86_64 guests run with 4level (qemu64 has no LA57)" ;;
    esac
    build_plugin
    build_programs
    local tmp
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    {
        printf '#!/bin/sh\nmount -t proc proc /proc\nexport PATH=/bin\n'
        printf 'echo memvirt-guest: start\nmemvirt-mark 100\n'
        printf '%s\n' "$*"
        printf 'status=$?\nmemvirt-mark 101\necho "memvirt-guest: exit $status"\npoweroff -f\n'
    } >"$tmp/init"
    initramfs "$tmp/initrd.gz" "$tmp/init" "$ARCH_DIR"/bin/*
    local console=$out.console
    local status=0
    if [ "$ARCH" = riscv64 ]; then
        timeout --foreground -s INT "$limit" qemu-system-riscv64 -machine virt -m 256M -smp 1 \
            -nographic -bios "$FIRMWARE" -kernel "$ARCH_DIR/kernel" -initrd "$tmp/initrd.gz" \
            -append "console=ttyS0 quiet rdinit=/init $levels" \
            -plugin "$PLUGIN,out=$out" >"$console" 2>&1 || status=$?
    else
        # The loader's copy of vmlinux (image=) holds the kernel's first page tables.
        timeout --foreground -s INT "$limit" qemu-system-x86_64 -machine pc -cpu qemu64 -m 256M \
            -smp 1 -nographic -no-reboot -kernel "$ARCH_DIR/kernel" -initrd "$tmp/initrd.gz" \
            -append "console=ttyS0 quiet rdinit=/init nokaslr" \
            -plugin "$PLUGIN,out=$out,image=$ARCH_DIR/kernel" >"$console" 2>&1 || status=$?
    fi
    if ! grep -q "memvirt-guest: exit" "$console"; then
        tail -n 20 "$console" >&2
        [ "$status" = 124 ] && die "the guest did not finish within $limit s (console: $console)"
        die "the guest did not finish its command (QEMU status $status; console: $console)"
    fi
    grep -a "memvirt plugin:" "$console" >&2 || true
    grep -a "memvirt-guest: exit" "$console" >&2
}

smoke() {
    local tmp
    tmp=$(mktemp -d)
    printf '#!/bin/sh\nmount -t proc proc /proc\necho MEMVIRT-GUEST-OK\npoweroff -f\n' >"$tmp/init"
    initramfs "$tmp/initrd.gz" "$tmp/init"
    local log=$tmp/console
    local qemu=(qemu-system-riscv64 -machine virt -bios "$FIRMWARE")
    [ "$ARCH" = x86_64 ] && qemu=(qemu-system-x86_64 -machine pc -cpu qemu64 -no-reboot)
    timeout 120 "${qemu[@]}" -m 512M -nographic -kernel "$ARCH_DIR/kernel" \
        -initrd "$tmp/initrd.gz" -append "console=ttyS0 quiet rdinit=/init nokaslr" >"$log" 2>&1 ||
        true
    if grep -q MEMVIRT-GUEST-OK "$log"; then
        echo "guest-kit: $(cat "$ARCH_DIR/kernel.package") booted to init under $("${qemu[0]}" --version | head -n 1)"
        rm -rf "$tmp"
    else
        tail -n 20 "$log" >&2
        die "the guest did not reach its init (console log above, kept in $log)"
    fi
}

case "${1:-}" in
    fetch)
        for a in $([ "${2:-all}" = all ] && echo riscv64 x86_64 || echo "$2"); do
            use_arch "$a"; install_host_tools; fetch_guest; echo "$ARCH_DIR"
        done
        ;;
    initramfs) use_arch "${2:-}"; shift 2; initramfs "$@" ;;
    smoke) use_arch "${2:-riscv64}"; install_host_tools; fetch_guest; smoke ;;
    record) use_arch "${2:-}"; shift 2; install_host_tools; fetch_guest; record "$@" ;;
    *) die "usage: guest-kit.sh fetch [ARCH|all] | initramfs ARCH OUT INIT [FILE...] | smoke [ARCH] | record ARCH OUT PAGING TIMEOUT CMD..." ;;
esac
