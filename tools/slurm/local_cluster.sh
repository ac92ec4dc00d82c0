#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, with accounting (slurmdbd + MariaDB), so that the Slurm
# executor of experiments/sweep.py (submitit) can be exercised end to end: submitit learns job states from `sacct`.
#
# Usage (as root):
#   bash tools/slurm/local_cluster.sh start    # install what is missing, configure, start, health-check
#   bash tools/slurm/local_cluster.sh status   # sinfo + sacct health; exit 0 only if healthy
#   bash tools/slurm/local_cluster.sh stop     # stop the daemons this script started
#
# `start` is idempotent: a healthy cluster with an unchanged configuration is left alone (a few seconds).
# Otherwise the configuration is (re)written and the daemons are (re)started, without systemd:
#   munged -> mariadbd -> slurmdbd -> slurmctld -> slurmd
# and a health check runs: a short job must end COMPLETED in `sacct`, and a running job must survive
# `scontrol requeue` (back to PENDING/RUNNING) and then end on `scancel`.
#
# The cluster: ClusterName=local, one node named after `hostname -s` with all its CPUs, one partition `cpu`
# (default, no time limit, no GPUs). Logs: /var/log/slurm/ (Slurm, MariaDB), /var/log/munge/munged.log.
# Environment: SLURM_LOCAL_CLUSTER (default local), SLURM_LOCAL_PARTITION (default cpu).
set -Eeuo pipefail

CLUSTER=${SLURM_LOCAL_CLUSTER:-local}
PARTITION=${SLURM_LOCAL_PARTITION:-cpu}
NODE=$(hostname -s)
CONF_DIR=/etc/slurm
SLURM_CONF=$CONF_DIR/slurm.conf
DBD_CONF=$CONF_DIR/slurmdbd.conf
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
STATE_DIR=/var/lib/slurm/slurmctld
SPOOL_DIR=/var/lib/slurm/slurmd
MARKERS=/run/local_cluster   # one file per daemon this script started: what `stop` stops
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_LOG=$LOG_DIR/mariadb.log
MUNGE_LOG=/var/log/munge/munged.log

STEP=setup
STEP_LOG=""

say() { echo "local_cluster: $*"; }

# One line naming the failed step and the log to read, then a non-zero exit.
fail() {
    trap - ERR
    say "FAILED at step '$STEP': $1${STEP_LOG:+ (read $STEP_LOG)}" >&2
    exit 1
}
# Only in the script's own shell: a failure inside $(...) is reported by the command that uses it.
trap '[[ $BASHPID == "$$" ]] && fail "unexpected error (line $LINENO)"' ERR

# elapsed T0: seconds since the $EPOCHREALTIME value T0.
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

T_START=$EPOCHREALTIME
step() { STEP=$1; STEP_LOG=${2:-}; say "$STEP [$(elapsed "$T_START") s]"; }

# wait_for SECONDS COMMAND...: poll COMMAND every 0.2 s until it succeeds; false if it never does.
wait_for() {
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_daemons NAME=PIDFILE...: TERM them all at once, wait up to 30 s for them to exit, then KILL.
stop_daemons() {
    local spec name pidfile pid pids=() names=()
    for spec in "$@"; do
        name=${spec%%=*} pidfile=${spec#*=}
        if pid_alive "$pidfile"; then
            pid=$(cat "$pidfile")
            kill "$pid" 2>/dev/null || true
            pids+=("$pid") names+=("$name($pid)")
        fi
        rm -f "$MARKERS/$name"
    done
    ((${#pids[@]})) || return 0
    local list; list=$(IFS=,; echo "${pids[*]}")
    # Gone, or a zombie waiting for init to reap it.
    wait_for 30 bash -c "! ps -o stat= -p $list | grep -qv '^Z'" || kill -9 "${pids[@]}" 2>/dev/null || true
    for spec in "$@"; do rm -f "${spec#*=}"; done
    say "stopped ${names[*]}"
}

# launch COMMAND...: start a daemon without the lock descriptor (it would keep the lock after this script ends).
launch() { "$@" 9>&-; }

mark_started() { mkdir -p "$MARKERS"; touch "$MARKERS/$1"; }

# ---------------------------------------------------------------------------------------------- packages
missing_commands() {
    local cmd missing=()
    for cmd in slurmctld slurmd slurmdbd munged munge unmunge sacct sacctmgr sbatch mysql mysqladmin; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    command -v mariadbd >/dev/null || command -v mysqld >/dev/null || missing+=(mariadbd)
    echo "${missing[*]}"
}

install_packages() {
    step "packages"
    local missing
    missing=$(missing_commands)
    [[ -z $missing ]] && return 0
    say "installing (missing: $missing)"
    STEP_LOG=/tmp/local_cluster_apt.log
    local pkgs=(slurm-wlm slurmdbd munge mariadb-server)
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}" >"$STEP_LOG" 2>&1 \
        || { apt-get update >>"$STEP_LOG" 2>&1 \
             && DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}" >>"$STEP_LOG" 2>&1; } \
        || fail "apt-get install ${pkgs[*]}"
    missing=$(missing_commands)
    [[ -z $missing ]] || fail "still missing after apt-get install: $missing"
}

# ---------------------------------------------------------------------------------------- configuration
db_password() {  # generated once, then read back from slurmdbd.conf
    if [[ -s $DBD_CONF ]] && grep -q '^StoragePass=' "$DBD_CONF"; then
        sed -n 's/^StoragePass=//p' "$DBD_CONF" | head -n1
    else
        od -An -N16 -tx1 /dev/urandom | tr -d ' \n'
    fi
}

render_slurm_conf() {
    local cpus mem_mb real_mb
    cpus=$(nproc)
    mem_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
    real_mb=$((mem_mb - (mem_mb / 10 > 512 ? mem_mb / 10 : 512)))  # leave 10% (at least 512 MB) to the OS
    cat <<EOF
# Single-node test cluster written by tools/slurm/local_cluster.sh; edits are overwritten by its 'start'.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
# Credential lifetime, which is also how long a requeued job waits before it may start again (default 120 s).
AuthInfo=cred_expire=30
MailProg=/bin/true

# Daemons: pid files, logs, state.
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR

# No systemd, no cgroups: track job processes through /proc, no CPU binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
MpiDefault=none

# Scheduling: CPUs are the only consumable resource (two 1-CPU jobs share a 2-core node whatever memory
# they ask for). Every submission is tried at once (batch_sched_delay=0; by default sbatch calls in quick
# succession wait up to 3 s), the backfill pass runs every second, so a job that fits starts within ~1 s;
# the full queue is tested every 2 s (default 60 s), which starts a requeued job as soon as it is eligible.
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
PriorityType=priority/basic

# Jobs: requeue allowed (pre-emption), TERM then KILL after 30 s, finished jobs kept 5 min in slurmctld; a node
# that was down comes back by itself once its slurmd registers.
JobRequeue=1
KillWait=30
MinJobAge=300
ReturnToService=2

# Accounting through slurmdbd, which sacct (and so submitit) reads.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none

NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

render_dbd_conf() {
    cat <<EOF
# slurmdbd of the single-node test cluster, written by tools/slurm/local_cluster.sh.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=$DB_NAME
StorageUser=$DB_USER
StoragePass=$1
EOF
}

# Writes both files when they differ from what is there; true if anything changed.
write_configs() {
    local changed=1 new
    mkdir -p "$CONF_DIR"
    new=$(render_slurm_conf)
    if [[ ! -f $SLURM_CONF ]] || [[ "$(cat "$SLURM_CONF")" != "$new" ]]; then
        printf '%s\n' "$new" >"$SLURM_CONF"; chmod 644 "$SLURM_CONF"; changed=0
    fi
    new=$(render_dbd_conf "$DB_PASS")
    if [[ ! -f $DBD_CONF ]] || [[ "$(cat "$DBD_CONF")" != "$new" ]]; then
        printf '%s\n' "$new" >"$DBD_CONF"; changed=0
    fi
    chown slurm:slurm "$DBD_CONF"; chmod 600 "$DBD_CONF"
    return $changed
}

configs_current() {
    [[ -f $SLURM_CONF && -f $DBD_CONF ]] \
        && [[ "$(cat "$SLURM_CONF")" == "$(render_slurm_conf)" ]] \
        && [[ "$(cat "$DBD_CONF")" == "$(render_dbd_conf "$DB_PASS")" ]]
}

prepare_dirs() {
    mkdir -p "$LOG_DIR" "$RUN_DIR" "$STATE_DIR" "$SPOOL_DIR" /run/munge /run/mysqld /var/log/munge
    chown slurm:slurm "$LOG_DIR" "$RUN_DIR" "$STATE_DIR"
    chown root:root "$SPOOL_DIR"          # slurmd runs as root
    chown munge:munge /run/munge /var/log/munge
    chown mysql:mysql /run/mysqld
    touch "$DB_LOG"; chown mysql:mysql "$DB_LOG"
}

# ------------------------------------------------------------------------------------------------ health
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
db_ok() { mysqladmin --protocol=socket ping >/dev/null 2>&1; }
dbd_ok() { timeout 10 sacctmgr -n -P show cluster format=cluster >/dev/null 2>&1; }
sacct_ok() {  # sacct exits 0 with a message on stderr when it cannot reach slurmdbd
    local err
    err=$(timeout 15 sacct -n -X -S now-1hours -o JobID 2>&1 >/dev/null) && [[ -z $err ]]
}
node_state() { timeout 10 sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1 || true; }
node_ready() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing|planned|reserved)$ ]]; }

healthy() { munge_ok && db_ok && node_ready && sacct_ok; }

# ------------------------------------------------------------------------------------------------- munge
start_munge() {
    step "munge" "$MUNGE_LOG"
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
            || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge /etc/munge/munge.key
    chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key
    munge_ok && return 0
    stop_daemons munged=/run/munge/munged.pid
    launch runuser -u munge -- /usr/sbin/munged --force || fail "munged did not start"
    mark_started munged
    wait_for 10 munge_ok || fail "munge -n | unmunge does not work"
}

# ----------------------------------------------------------------------------------------------- MariaDB
start_mariadb() {
    step "mariadb" "$DB_LOG"
    if ! db_ok; then
        local server
        server=$(command -v mariadbd || command -v mysqld)
        if [[ ! -d /var/lib/mysql/mysql ]]; then
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql >>"$DB_LOG" 2>&1 \
                || fail "mariadb-install-db"
        fi
        rm -f /run/mysqld/mysqld.sock /run/mysqld/mysqld.pid
        # setsid -f: in its own session, not a child of this script; innodb_lock_wait_timeout: the value
        # slurmdbd asks for (it warns otherwise).
        launch setsid -f "$server" --user=mysql --pid-file=/run/mysqld/mysqld.pid --log-error="$DB_LOG" \
            --innodb-lock-wait-timeout=900 </dev/null >>"$DB_LOG" 2>&1
        mark_started mariadb
        wait_for 60 db_ok || fail "MariaDB does not answer mysqladmin ping"
    fi
    mysql --protocol=socket <<EOF || fail "creating database $DB_NAME / user $DB_USER"
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF
}

# ------------------------------------------------------------------------------------------------- Slurm
stop_slurm() {
    stop_daemons slurmd="$RUN_DIR/slurmd.pid" slurmctld="$RUN_DIR/slurmctld.pid" slurmdbd="$RUN_DIR/slurmdbd.pid"
}

start_slurmdbd() {
    step "slurmdbd" "$LOG_DIR/slurmdbd.log"
    if ! pid_alive "$RUN_DIR/slurmdbd.pid"; then
        launch slurmdbd || fail "slurmdbd did not start"
        mark_started slurmdbd
    fi
    # The first start creates the schema, which takes a while.
    wait_for 90 dbd_ok || fail "slurmdbd does not answer sacctmgr"
    if [[ -z $(sacctmgr -n -P show cluster "$CLUSTER" format=cluster 2>/dev/null) ]]; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null || fail "sacctmgr add cluster $CLUSTER"
    fi
}

start_slurmctld() {
    step "slurmctld" "$LOG_DIR/slurmctld.log"
    if ! pid_alive "$RUN_DIR/slurmctld.pid"; then
        launch slurmctld || fail "slurmctld did not start"
        mark_started slurmctld
    fi
    wait_for 30 timeout 5 scontrol ping || fail "slurmctld does not answer scontrol ping"
}

start_slurmd() {
    step "slurmd" "$LOG_DIR/slurmd.log"
    if ! pid_alive "$RUN_DIR/slurmd.pid"; then
        launch slurmd || fail "slurmd did not start"
        mark_started slurmd
    fi
    local deadline=$((SECONDS + 60)) state
    until node_ready; do
        state=$(node_state)
        # A node left down or drained by an earlier run (or by an unclean stop) is put back into service.
        if [[ $state =~ ^(down|drained|draining|fail|inval) ]]; then
            scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
        fi
        ((SECONDS < deadline)) || fail "node $NODE is '${state:-unknown}', not idle"
        sleep 0.5
    done
}

# -------------------------------------------------------------------------------------------- job checks
# job_state ID: the state squeue shows, empty once the job has left the queue view.
job_state() { squeue -h -j "$1" -o %T 2>/dev/null || true; }
sacct_state() { sacct -n -X -P -j "$1" -o State 2>/dev/null | tail -n1; }

check_jobs() {
    step "health check: job COMPLETED in sacct" "$LOG_DIR/slurmctld.log"
    local id t0
    t0=$EPOCHREALTIME
    id=$(sbatch --parsable --wrap 'sleep 1' -p "$PARTITION" -t 1 -c 1 -o /dev/null -J lc-health) \
        || fail "sbatch"
    wait_for 60 bash -c "[[ \$(squeue -h -j $id -o %T 2>/dev/null) =~ ^(|COMPLETED)$ ]]" \
        || fail "job $id still '$(job_state "$id")' after 60 s"
    wait_for 30 bash -c "[[ \$(sacct -n -X -P -j $id -o State 2>/dev/null | tail -n1) == COMPLETED ]]" \
        || fail "sacct says job $id is '$(sacct_state "$id")', not COMPLETED" "$LOG_DIR/slurmdbd.log"
    say "  job $id COMPLETED in sacct after $(elapsed "$t0") s"

    step "health check: requeue then scancel" "$LOG_DIR/slurmctld.log"
    id=$(sbatch --parsable --wrap 'sleep 300' -p "$PARTITION" -t 10 -c 1 -o /dev/null -J lc-requeue) \
        || fail "sbatch"
    wait_for 30 bash -c "[[ \$(squeue -h -j $id -o %T) == RUNNING ]]" \
        || { scancel "$id" || true; fail "job $id is '$(job_state "$id")', not RUNNING after 30 s"; }
    scontrol requeue "$id" || { scancel "$id" || true; fail "scontrol requeue $id"; }
    wait_for 60 bash -c "[[ \$(squeue -h -j $id -o %T) =~ ^(PENDING|RUNNING)$ ]]" \
        || { scancel "$id" || true; fail "requeued job $id is '$(job_state "$id")', not PENDING/RUNNING"; }
    say "  job $id back to $(job_state "$id") after requeue"
    scancel "$id" || fail "scancel $id"
    wait_for 60 bash -c "[[ \$(squeue -h -j $id -o %T 2>/dev/null) =~ ^(|CANCELLED)$ ]]" \
        || fail "cancelled job $id is still '$(job_state "$id")'"
    wait_for 30 bash -c "[[ \$(sacct -n -X -P -j $id -o State 2>/dev/null | tail -n1) == CANCELLED* ]]" \
        || fail "sacct says cancelled job $id is '$(sacct_state "$id")'" "$LOG_DIR/slurmdbd.log"
    say "  job $id $(sacct_state "$id") in sacct"
}

# -------------------------------------------------------------------------------------------- commands
cmd_start() {
    local t0=$EPOCHREALTIME
    install_packages
    DB_PASS=$(db_password)
    if configs_current && healthy; then
        say "cluster '$CLUSTER' already up and healthy (node $NODE $(node_state), sacct answers) [$(elapsed "$t0") s]"
        return 0
    fi
    step "configuration" "$SLURM_CONF"
    prepare_dirs
    # A changed configuration, or an unhealthy cluster: restart the Slurm daemons from scratch.
    write_configs && say "  configuration written"
    stop_slurm
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurmctld
    start_slurmd
    check_jobs
    STEP="done"
    say "cluster '$CLUSTER' up: node $NODE $(node_state), partition $PARTITION; start took $(elapsed "$t0") s"
}

cmd_stop() {
    STEP=stop
    stop_slurm
    [[ -e $MARKERS/munged ]] && stop_daemons munged=/run/munge/munged.pid
    if [[ -e $MARKERS/mariadb ]]; then
        mysqladmin --protocol=socket shutdown 2>/dev/null || stop_daemons mariadb=/run/mysqld/mysqld.pid
        wait_for 30 bash -c '! mysqladmin --protocol=socket ping' || true
        rm -f "$MARKERS/mariadb"
        say "stopped mariadb"
    fi
    return 0
}

cmd_status() {
    STEP=status
    local ok=0
    # check NAME COMMAND...: one line, ok or not.
    check() {
        local name=$1; shift
        if "$@"; then say "$name: ok"; else say "$name: NOT ok"; ok=1; fi
    }
    check "munge (munge -n | unmunge)" munge_ok
    check "mariadb (mysqladmin ping)" db_ok
    echo "--- sinfo"
    timeout 10 sinfo 2>&1 || true
    check "node $NODE ($(node_state))" node_ready
    check "sacct ($(timeout 15 sacct -n -X -S now-1hours -o JobID 2>/dev/null | wc -l) jobs in the last hour)" sacct_ok
    if ((ok == 0)); then say "healthy"; else say "NOT healthy"; fi
    return $ok
}

# One start or stop at a time.
lock() {
    [[ $EUID -eq 0 ]] || fail "must run as root"
    exec 9>/run/local_cluster.lock; flock -w 120 9 || fail "another start/stop holds /run/local_cluster.lock"
}

case ${1:-} in
    start) lock; cmd_start ;;
    stop) lock; cmd_stop ;;
    status) cmd_status || exit 1 ;;
    *) echo "usage: bash $0 start|stop|status" >&2; exit 2 ;;
esac
