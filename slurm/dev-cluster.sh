#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the launcher tests (run as root; idempotent).
#
#   sudo slurm/dev-cluster.sh          # install (first time), configure, start; prints one status line
#   sudo slurm/dev-cluster.sh status   # the status line only; exit 1 when the node is not usable
#   sudo slurm/dev-cluster.sh down     # stop the daemons this script started (by their pid files)
#
# Debian's slurm-wlm + munge, with slurmdbd on a local MariaDB so that `sacct` works: submitit polls
# job states with sacct, and a job killed before it writes its result is only seen as done through it.
# No systemd: every daemon is started directly and tracked by its pid file. Running it again with the
# cluster up changes nothing; a changed slurm.conf (other core count, memory) restarts the daemons.
set -euo pipefail

CLUSTER=${DISTRIB_SLURM_CLUSTER:-distrib-dev}
PARTITION=debug
ETC=/etc/slurm
RUN=/run/slurm
LOG=/var/log/slurm
DB_PASS=distrib-dev  # a throwaway password for a database that only listens on localhost

log() { echo "dev-cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
    local missing=()
    for bin in slurmctld slurmd slurmdbd sinfo munged mariadbd; do
        command -v "$bin" >/dev/null 2>&1 || [[ -x /usr/sbin/$bin ]] || missing+=("$bin")
    done
    ((${#missing[@]} == 0)) && return
    log "installing slurm-wlm, slurmdbd, munge, mariadb-server (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d keeps the packages' init scripts from starting daemons we configure ourselves.
    apt-get install -y -qq --no-install-recommends slurm-wlm slurmdbd munge mariadb-server \
        mariadb-client procps >/dev/null
}

start_munge() {
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 0755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        if command -v mungekey >/dev/null; then mungekey --create --force; else
            dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none; fi
        chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    fi
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged --force
        for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    fi
    munge -n | unmunge >/dev/null || die "munged does not answer"
}

start_mariadb() {
    if ! mariadb -u root -e 'SELECT 1' >/dev/null 2>&1; then
        install -d -o mysql -g mysql /run/mysqld
        (cd / && setsid mariadbd-safe >/dev/null 2>&1 < /dev/null &)
        for _ in $(seq 120); do mariadb -u root -e 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.5; done
    fi
    mariadb -u root -e 'SELECT 1' >/dev/null 2>&1 || die "mariadb did not start"
    mariadb -u root -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

write_configs() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')  # slurmd rejects a node with less than this
    install -d "$ETC" "$RUN" "$LOG" /var/spool/slurmctld /var/spool/slurmd
    cat > "$ETC/slurm.conf.new" <<EOF
# Written by slurm/dev-cluster.sh: a one-node development cluster. Edit the script, not this file.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
MailProg=/bin/true
MpiDefault=none
# No cgroups in a container: track processes by parent pid, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# Cores are the consumable: two 1-CPU tasks share a 2-core node; memory is not enforced.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdTimeout=60
SlurmctldTimeout=60
InactiveLimit=0
KillWait=30
MinJobAge=60
MaxJobCount=10000
MaxArraySize=1001
# --requeue and scontrol requeue work; a requeued job waits for its BeginTime (~2 min) unless
# released with 'scontrol update JobId=N StartTime=now' (root/SlurmUser may do that).
JobRequeue=1
# Batch-step USR2 (--signal=B:USR2@120) and preemption signals come through unchanged.
PropagateResourceLimitsExcept=MEMLOCK
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    cat > "$ETC/slurmdbd.conf.new" <<EOF
# Written by slurm/dev-cluster.sh.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    chmod 0600 "$ETC/slurmdbd.conf.new"
    CHANGED=0
    for f in slurm.conf slurmdbd.conf; do
        if cmp -s "$ETC/$f.new" "$ETC/$f"; then rm "$ETC/$f.new"; else mv "$ETC/$f.new" "$ETC/$f"; CHANGED=1; fi
    done
}

stop_daemon() {  # name; by its pid file only
    local pidfile=$RUN/$1.pid
    alive "$pidfile" || return 0
    kill "$(cat "$pidfile")"
    for _ in $(seq 100); do alive "$pidfile" || return 0; sleep 0.1; done
    kill -9 "$(cat "$pidfile")" 2>/dev/null || true
}

start_daemons() {
    if ((CHANGED)); then
        log "configuration changed: (re)starting the daemons"
        stop_daemon slurmd; stop_daemon slurmctld; stop_daemon slurmdbd
    fi
    alive "$RUN/slurmdbd.pid" || /usr/sbin/slurmdbd
    for _ in $(seq 60); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
    sacctmgr -n list cluster >/dev/null 2>&1 || die "slurmdbd does not answer (see $LOG/slurmdbd.log)"
    sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
    alive "$RUN/slurmctld.pid" || /usr/sbin/slurmctld
    alive "$RUN/slurmd.pid" || /usr/sbin/slurmd
}

wait_idle() {
    local state=""
    for _ in $(seq 120); do
        state=$(sinfo -h -N -o '%t' 2>/dev/null | head -1 || true)
        case $state in
            idle|mix|alloc) return 0 ;;
            down*|drain*) scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    die "node not ready (state '${state:-none}'); see $LOG/slurmctld.log and $LOG/slurmd.log"
}

status_line() {
    local node
    node=$(sinfo -h -N -o '%N %t cpus=%c mem=%mMB partition=%P' 2>/dev/null | head -1) || return 1
    [[ -n $node ]] || return 1
    sacctmgr -n list cluster >/dev/null 2>&1 || return 1
    echo "slurm dev cluster $CLUSTER up: $node; $(sinfo -V); sacct via slurmdbd"
}

main() {
    [[ $(id -u) == 0 ]] || die "run as root"
    case ${1:-up} in
        up)
            install_packages
            start_munge
            start_mariadb
            write_configs
            start_daemons
            wait_idle
            status_line ;;
        status) status_line || { log "cluster not up"; exit 1; } ;;
        down) stop_daemon slurmd; stop_daemon slurmctld; stop_daemon slurmdbd; log "slurm daemons stopped" ;;
        *) die "usage: $0 [up|status|down]" ;;
    esac
}

main "$@"
