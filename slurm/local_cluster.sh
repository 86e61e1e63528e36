#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests and for trying sweeps locally.
#
#   slurm/local_cluster.sh up      # install (if missing) and start munge, slurmctld, slurmd
#   slurm/local_cluster.sh down    # stop the daemons this script started
#   slurm/local_cluster.sh status  # sinfo
#
# Needs root (it writes /etc/slurm/slurm.conf and runs the daemons). Runs without cgroups:
# ProctrackType=proctrack/linuxproc, TaskPlugin=task/none, SelectType=select/cons_tres, so it
# works inside containers. It refuses to overwrite a slurm.conf it did not write.
set -euo pipefail

STATE_DIR="${LOCAL_SLURM_STATE:-/var/lib/alphaadam-local-slurm}"
CONF=/etc/slurm/slurm.conf
MARKER="# written by alphaadam slurm/local_cluster.sh"
NODE="$(hostname -s)"

log() { echo "[local_cluster] $*" >&2; }

need_root() {
    if [[ "$(id -u)" != 0 ]]; then
        log "must run as root (it starts slurmctld/slurmd and writes $CONF)"
        exit 1
    fi
}

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    if ((${#missing[@]})); then
        log "installing ${missing[*]} (apt-get)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
    fi
}

write_config() {
    if [[ -f "$CONF" ]] && ! grep -qF "$MARKER" "$CONF"; then
        log "$CONF exists and was not written by this script; refusing to overwrite it"
        exit 1
    fi
    local cpus mem_mb
    cpus="$(nproc)"
    # Leave 1 GiB to the OS so slurmd does not mark the node as short of memory.
    mem_mb=$(($(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024))
    mkdir -p /etc/slurm "$STATE_DIR"/{ctld,d,log}
    cat >"$CONF" <<EOF
$MARKER
ClusterName=alphaadam-local
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it may start again (default 120).
AuthInfo=cred_expire=15
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
# Fast turnaround for tests.
SchedulerParameters=sched_interval=2
MinJobAge=300
KillWait=5
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
    echo "munge" >"$STATE_DIR/started_munge"
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.2
    done
    log "munged did not come up"
    exit 1
}

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

up() {
    need_root
    install_packages
    write_config
    start_munge
    alive "$STATE_DIR/slurmctld.pid" || slurmctld
    alive "$STATE_DIR/slurmd.pid" || slurmd
    for _ in $(seq 60); do
        if sinfo -h -n "$NODE" -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            log "up: $(sinfo -h -o '%P %D %t %c cpus %m MB')"
            return
        fi
        # A node that was down when the controller restarted stays down until resumed.
        scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
        sleep 1
    done
    log "SLURM did not become ready; see $STATE_DIR/log/"
    tail -n 20 "$STATE_DIR"/log/*.log >&2 || true
    exit 1
}

stop_pidfile() {
    local pidfile="$1"
    if alive "$pidfile"; then
        local pid
        pid="$(cat "$pidfile")"
        kill "$pid"
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || return 0
            sleep 0.2
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
}

down() {
    need_root
    stop_pidfile "$STATE_DIR/slurmd.pid"
    stop_pidfile "$STATE_DIR/slurmctld.pid"
    if [[ -f "$STATE_DIR/started_munge" ]]; then
        stop_pidfile /run/munge/munged.pid
        rm -f "$STATE_DIR/started_munge"
    fi
    log "down"
}

case "${1:-}" in
up) up ;;
down) down ;;
status) sinfo ;;
*)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
