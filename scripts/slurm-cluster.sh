#!/usr/bin/env bash
# A one-node Slurm cluster on localhost, private to one directory, for the test of
# `memvirt experiment submit` (tests/slurm.rs).
#
#   scripts/slurm-cluster.sh install     install Debian's slurm-wlm and munge (apt-get; root or
#                                        password-less sudo) unless they are there
#   scripts/slurm-cluster.sh start DIR   start munged, slurmctld and slurmd with everything
#                                        (key, socket, slurm.conf, state, logs) inside DIR, wait
#                                        until the node is idle, print the SLURM_CONF to use
#   scripts/slurm-cluster.sh stop DIR    stop the daemons start DIR started
#
# Nothing outside DIR is read or changed besides the installed packages: the cluster has its
# own munge key and socket and listens on free ports, so it runs beside a real cluster's
# daemons and needs no root once installed. The daemons run as the calling user.
set -euo pipefail

die() { echo "slurm-cluster: $*" >&2; exit 1; }

install() {
    local missing=()
    for tool in slurmctld slurmd sbatch munged mungekey; do
        command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin" command -v "$tool" >/dev/null 2>&1 \
            || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 || die "no apt-get to install slurm-wlm and munge (missing: ${missing[*]})"
    local as_root=()
    [ "$(id -u)" = 0 ] || as_root=(sudo -n)
    echo "slurm-cluster: installing slurm-wlm and munge (apt-get)" >&2
    { "${as_root[@]}" apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends \
            slurm-wlm munge; } >/dev/null 2>&1 \
        || die "could not install slurm-wlm and munge (needs root or password-less sudo)"
}

# A TCP port on localhost nothing listens on.
free_port() {
    local port tries
    for tries in $(seq 1 50); do
        port=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    die "no free TCP port found"
}

start() {
    local dir
    dir=$(cd "$1" && pwd) || die "no directory $1"
    PATH="$PATH:/usr/sbin"
    for tool in slurmctld slurmd sbatch sinfo munged mungekey; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (run: $0 install)"
    done
    mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
    chmod 700 "$dir" "$dir/munge"
    # munge: a key, socket and daemon of this cluster's own.
    local munge="$dir/munge"
    [ -f "$munge/munge.key" ] || mungekey --create --keyfile="$munge/munge.key" >/dev/null 2>&1 \
        || die "mungekey could not create a key"
    chmod 600 "$munge/munge.key"
    munged --force --key-file="$munge/munge.key" --socket="$munge/munge.socket" \
        --pid-file="$munge/munged.pid" --log-file="$munge/munged.log" \
        --seed-file="$munge/munged.seed" >/dev/null 2>&1 \
        || die "munged did not start (see $munge/munged.log)"
    munge -S "$munge/munge.socket" -n | unmunge -S "$munge/munge.socket" >/dev/null 2>&1 \
        || die "munge credentials do not round-trip (see $munge/munged.log)"
    local user cpus ctld_port slurmd_port
    user=$(id -un)
    cpus=$(nproc)
    ctld_port=$(free_port)
    slurmd_port=$(free_port)
    [ "$ctld_port" != "$slurmd_port" ] || slurmd_port=$(free_port)
    cat >"$dir/slurm.conf" <<EOF
# A one-node cluster for memvirt's tests (scripts/slurm-cluster.sh).
ClusterName=memvirt-test
SlurmctldHost=localhost
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$munge/munge.socket
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName=localhost CPUs=$cpus State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld >/dev/null 2>&1 || die "slurmctld did not start (see $dir/slurmctld.log)"
    slurmd -N localhost >/dev/null 2>&1 || die "slurmd did not start (see $dir/slurmd.log)"
    local state=""
    for _ in $(seq 1 60); do
        state=$(sinfo -h -N -o %t 2>/dev/null || true)
        [ "$state" = idle ] && { echo "$SLURM_CONF"; return 0; }
        sleep 0.5
    done
    die "the node did not become idle within 30 s (state: ${state:-none}; see $dir/slurmctld.log, $dir/slurmd.log)"
}

stop() {
    local dir=$1 pidfile pid
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
}

case "${1:-}" in
    install) install ;;
    start) [ $# -eq 2 ] || die "usage: $0 start DIR"; start "$2" ;;
    stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
    *) die "usage: $0 install | start DIR | stop DIR" ;;
esac
