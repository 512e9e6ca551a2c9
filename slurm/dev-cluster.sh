#!/usr/bin/env bash
# A real SLURM cluster on this machine, for the launcher tests (run as root; idempotent).
#
#   sudo slurm/dev-cluster.sh [up] [--nodes N] [--reset]  # install (first time), configure, start; one status line
#   sudo slurm/dev-cluster.sh status                       # the status line only; exit 1 when a node is not usable
#   sudo slurm/dev-cluster.sh down                         # stop the daemons it started; remove the node namespaces
#   sudo slurm/dev-cluster.sh exec NODE CMD [ARG ...]      # run CMD on a node: its network, hostname and mounts
#
# --nodes 1 (the default, unless it was last brought up with more: a rerun keeps the shape): one slurmd on
# this host, everything on 127.0.0.1.
# --nodes N (2-9): N hosts node1..nodeN made of Linux namespaces. Each has its own network namespace
# (address 10.77.0.1<i> on a bridge whose host side is 10.77.0.1, no route beyond it), its own hostname
# (a UTS namespace) and its own mount namespace: an /etc/hosts naming every node, and a private tmpfs at
# /srv/distrib-local, a node-local disk that neither the host nor the other nodes see. Everything else
# (the repository, /tmp, the venv) is the host's, as a shared file system would be. One slurmd runs in
# each node; munged, slurmdbd and slurmctld run on the host and serve them all. The namespaces are kept
# as files under /run/distrib-cluster, so `exec` (nsenter) reaches the same node every time.
#
# slurmctld keeps its state in /var/spool/slurmctld under the cluster's name; state of another cluster
# name is reported and left alone, or with --reset moved aside (never deleted).
#
# Debian's slurm-wlm + munge, with slurmdbd on a local MariaDB so that `sacct` works: submitit polls
# job states with sacct, and a job killed before it writes its result is only seen as done through it.
# No systemd: every daemon is started directly and tracked by its pid file. Running it again with the
# cluster up changes nothing; a changed slurm.conf (other core count, memory) restarts the daemons.
set -euo pipefail

CLUSTER=${DISTRIB_SLURM_CLUSTER:-distrib-dev}
PARTITION=debug
STATE=/var/spool/slurmctld
NS_DIR=/run/distrib-cluster  # the persistent UTS and mount namespaces, the nodes' hosts file
SUBNET=10.77.0
BRIDGE=distrib-br0
NODE_LOCAL=/srv/distrib-local  # a private tmpfs inside each node
NODES=  # from --nodes, else the count it was last brought up with ($RUN/nodes), else 1
RESET=0
ETC=/etc/slurm
RUN=/run/slurm
LOG=/var/log/slurm
DB_PASS=distrib-dev  # a throwaway password for a database that only listens on localhost

log() { echo "dev-cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
    local missing=()
    for bin in slurmctld slurmd slurmdbd sinfo munged mariadbd ip; do
        command -v "$bin" >/dev/null 2>&1 || [[ -x /usr/sbin/$bin ]] || missing+=("$bin")
    done
    ((${#missing[@]} == 0)) && return
    log "installing slurm-wlm, slurmdbd, munge, mariadb-server (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d keeps the packages' init scripts from starting daemons we configure ourselves.
    apt-get install -y -qq --no-install-recommends slurm-wlm slurmdbd munge mariadb-server \
        mariadb-client procps iproute2 >/dev/null
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

node_lines() {  # the node and partition lines of slurm.conf, and the file names that differ per node
    local host=$1 cpus mem_mb
    cpus=$(nproc)
    # Every slurmd sees the whole machine's memory; it rejects a node configured with more than it has.
    mem_mb=$(free -m | awk -v n="$NODES" '/^Mem:/ {print int($2 * 0.9 / n)}')
    if ((NODES == 1)); then
        echo "SlurmdPidFile=$RUN/slurmd.pid"
        echo "SlurmdSpoolDir=/var/spool/slurmd"
        echo "SlurmdLogFile=$LOG/slurmd.log"
        echo "NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
        echo "PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
        return
    fi
    echo "SlurmdPidFile=$RUN/slurmd-%n.pid"
    echo "SlurmdSpoolDir=/var/spool/slurmd/%n"
    echo "SlurmdLogFile=$LOG/slurmd-%n.log"
    for i in $(seq "$NODES"); do
        echo "NodeName=node$i NodeAddr=$SUBNET.$((10 + i)) CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
    done
    echo "PartitionName=$PARTITION Nodes=node[1-$NODES] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
}

write_configs() {
    local host ctl_addr
    host=$(hostname -s)
    ctl_addr=127.0.0.1
    ((NODES == 1)) || ctl_addr=$SUBNET.1  # the nodes reach the controller on the bridge
    install -d "$ETC" "$RUN" "$LOG" "$STATE" /var/spool/slurmd
    cat > "$ETC/slurm.conf.new" <<EOF
# Written by slurm/dev-cluster.sh: a $NODES-node development cluster. Edit the script, not this file.
ClusterName=$CLUSTER
SlurmctldHost=$host($ctl_addr)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmctldLogFile=$LOG/slurmctld.log
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
$(node_lines "$host")
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

stop_daemon() {  # pid file name; by its pid file only
    local pidfile=$RUN/$1.pid pid
    alive "$pidfile" || return 0
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

stop_slurmds() {  # the host's and every node's
    local pidfile
    for pidfile in "$RUN"/slurmd.pid "$RUN"/slurmd-*.pid; do
        [[ -e $pidfile ]] && stop_daemon "$(basename "$pidfile" .pid)"
    done
    return 0
}

check_state() {
    # slurmctld refuses state saved under another ClusterName (fatal: CLUSTER NAME MISMATCH, only in its log).
    local saved old aside
    saved=$(cat "$STATE/clustername" 2>/dev/null || true)
    old=${saved%%$'\n'*}
    [[ -z $old || $old == "$CLUSTER" ]] && return 0
    if ((RESET)); then
        aside=$STATE.$old.$(date +%Y%m%d-%H%M%S)
        stop_daemon slurmctld
        mv "$STATE" "$aside" && install -d "$STATE"
        log "state of cluster '$old' moved aside to $aside"
        return 0
    fi
    die "$STATE holds the state of another cluster, '$old' (slurmctld would stop with CLUSTER NAME MISMATCH);" \
        "rerun with --reset to move it aside, or with DISTRIB_SLURM_CLUSTER=$old to run as that cluster"
}

node_exec() {  # node, command...: in the node's network, UTS and mount namespaces, in this directory
    local node=$1
    shift
    [[ -e /run/netns/distrib-$node && -e $NS_DIR/$node.mnt ]] || die "no node '$node' (is the cluster up with --nodes?)"
    exec nsenter --net="/run/netns/distrib-$node" --uts="$NS_DIR/$node.uts" --mount="$NS_DIR/$node.mnt" \
        --wd="$PWD" -- "$@"
}

write_hosts() {  # every node resolves its own name to its bridge address: gloo binds to what the name resolves to
    local i
    {
        echo "127.0.0.1 localhost"
        echo "$SUBNET.1 $(hostname -s)"
        for i in $(seq "$NODES"); do echo "$SUBNET.$((10 + i)) node$i"; done
    } > "$NS_DIR/hosts.new"
    # In place, not renamed: the nodes see this file through bind mounts of its inode.
    cmp -s "$NS_DIR/hosts.new" "$NS_DIR/hosts" || cat "$NS_DIR/hosts.new" > "$NS_DIR/hosts"
    rm -f "$NS_DIR/hosts.new"
}

make_node() {  # i: network namespace + veth on the bridge, UTS and mount namespaces kept as files
    local node=node$1 ns=distrib-node$1 addr=$SUBNET.$((10 + $1))
    [[ -e /run/netns/$ns ]] || ip netns add "$ns"
    if ! ip link show "dn$1" >/dev/null 2>&1; then
        ip link add "dn$1" type veth peer name eth0 netns "$ns"
        ip link set "dn$1" master "$BRIDGE" up
    fi
    ip -n "$ns" addr replace "$addr/24" dev eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    nsenter --uts="$NS_DIR/$node.uts" true 2>/dev/null && return 0
    touch "$NS_DIR/$node.uts" "$NS_DIR/$node.mnt"
    # slave: mounts made on the host later still appear in the node; the node's own never leave it.
    unshare --uts="$NS_DIR/$node.uts" --mount="$NS_DIR/$node.mnt" --propagation slave sh -ec "
        hostname $node
        mount -t tmpfs -o size=4g,mode=1777 distrib-$node $NODE_LOCAL
        mount --bind $NS_DIR/hosts /etc/hosts"
}

make_nodes() {
    unshare --net --uts --mount true 2>/dev/null ||
        die "cannot create namespaces here (needs root with CAP_SYS_ADMIN and CAP_NET_ADMIN," \
            "e.g. a privileged container); --nodes 1 needs neither"
    install -d "$NS_DIR" "$NODE_LOCAL"
    # A persistent mount namespace may only be kept on a private mount.
    mountpoint -q "$NS_DIR" || mount --bind "$NS_DIR" "$NS_DIR"
    mount --make-private "$NS_DIR"
    ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
    ip addr replace "$SUBNET.1/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    write_hosts
    local i
    for i in $(seq "$NODES"); do make_node "$i"; done
}

remove_nodes() {
    local file ns link
    for file in "$NS_DIR"/node*.uts "$NS_DIR"/node*.mnt; do
        [[ -e $file ]] || continue
        umount "$file" 2>/dev/null || true
        rm -f "$file"
    done
    for ns in $(ip netns list | awk '/^distrib-node/ {print $1}'); do ip netns del "$ns"; done
    for link in $(ip -o link show | awk -F': ' '$2 ~ /^dn[0-9]+@/ {sub(/@.*/, "", $2); print $2}'); do
        ip link del "$link" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
}

start_slurmds() {
    local i
    if ((NODES == 1)); then
        alive "$RUN/slurmd.pid" || /usr/sbin/slurmd
        return
    fi
    for i in $(seq "$NODES"); do
        alive "$RUN/slurmd-node$i.pid" || (node_exec "node$i" /usr/sbin/slurmd)
    done
}

start_daemons() {
    if ((CHANGED)); then
        log "configuration changed: (re)starting the daemons"
        stop_slurmds; stop_daemon slurmctld; stop_daemon slurmdbd
    fi
    alive "$RUN/slurmdbd.pid" || /usr/sbin/slurmdbd
    for _ in $(seq 60); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
    sacctmgr -n list cluster >/dev/null 2>&1 || die "slurmdbd does not answer (see $LOG/slurmdbd.log)"
    sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
    alive "$RUN/slurmctld.pid" || /usr/sbin/slurmctld
    start_slurmds
}

wait_idle() {  # every node idle (or running jobs); a node that came back down is resumed
    local states="" ready node state
    for _ in $(seq 120); do
        states=$(sinfo -h -N -o '%N %t' 2>/dev/null || true)
        ready=0
        while read -r node state; do
            case $state in
                idle|mix|alloc) ready=$((ready + 1)) ;;
                down*|drain*) scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true ;;
            esac
        done <<< "$states"
        ((ready == NODES)) && return 0
        sleep 0.5
    done
    die "nodes not ready (${states//$'\n'/, }); see $LOG/slurmctld.log and $LOG/slurmd*.log"
}

status_line() {
    local nodes
    nodes=$(sinfo -h -N -o '%N %t cpus=%c mem=%mMB' 2>/dev/null) || return 1
    [[ -n $nodes ]] || return 1
    sacctmgr -n list cluster >/dev/null 2>&1 || return 1
    echo "slurm dev cluster $CLUSTER up: $(sinfo -h -o %P | head -1) ${nodes//$'\n'/, };" \
         "$(sinfo -V); sacct via slurmdbd"
}

parse_up_args() {
    while (($#)); do
        case $1 in
            --nodes) [[ ${2:-} =~ ^[1-9]$ ]] || die "--nodes takes a count from 1 to 9"; NODES=$2; shift ;;
            --nodes=*) set -- --nodes "${1#*=}" "${@:2}"; continue ;;
            --reset) RESET=1 ;;
            *) die "usage: $0 [up] [--nodes N] [--reset] | status | down | exec NODE CMD [ARG ...]" ;;
        esac
        shift
    done
}

main() {
    [[ $(id -u) == 0 ]] || die "run as root"
    local cmd=up
    case ${1:-} in up|status|down|exec) cmd=$1; shift ;; esac
    case $cmd in
        up)
            parse_up_args "$@"
            # Without --nodes, keep the shape the cluster has: a plain rerun never turns two nodes into one.
            [[ -n $NODES ]] || NODES=$(cat "$RUN/nodes" 2>/dev/null || echo 1)
            check_state  # before anything is stopped or rewritten
            install_packages
            start_munge
            start_mariadb
            write_configs
            ((NODES == 1)) || make_nodes
            start_daemons
            wait_idle
            echo "$NODES" > "$RUN/nodes"
            status_line ;;
        status) status_line || { log "cluster not up"; exit 1; } ;;
        down)
            stop_slurmds; stop_daemon slurmctld; stop_daemon slurmdbd
            remove_nodes
            log "slurm daemons stopped, node namespaces removed" ;;
        exec) (($# >= 2)) || die "usage: $0 exec NODE CMD [ARG ...]"; node_exec "$@" ;;
    esac
}

main "$@"
