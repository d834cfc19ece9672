#!/usr/bin/env bash
# A real single-node SLURM cluster for CI and local tests: munge, MariaDB + slurmdbd (so `sacct`
# and the Snakemake plugin's default status query work), slurmctld and slurmd, with fake GPUs
# (GresTypes=gpu, gres.conf File= plain files). Needs root; Debian 12 packages.
#
#   scripts/slurm-ci.sh up [DIR]       # install packages if missing, start everything (idempotent)
#   scripts/slurm-ci.sh status [DIR]   # exit 0 when every daemon answers
#   scripts/slurm-ci.sh env [DIR]      # print `export SLURM_CONF=...` for the client commands
#   scripts/slurm-ci.sh down [DIR]     # cancel jobs, stop the daemons by PID (state stays in DIR)
#   scripts/slurm-ci.sh purge [DIR]    # down, then delete DIR
#
# Exit status 3: the SLURM packages are missing and cannot be installed (callers may skip).
#
# All state (config, munge key and socket, database, spool, logs, PID files) lives in DIR
# (default $SLURM_CI_DIR, else /tmp/context-research-slurm). Clients find the cluster through
# SLURM_CONF=DIR/etc/slurm.conf; the munge socket path travels in slurm.conf (AuthInfo,
# AccountingStoragePass), so /etc/munge is not used. One exception: inside a job the Snakemake
# jobstep plugin strips every SLURM_* variable (SLURM_CONF too) before its nested `srun`, which
# then only finds /etc/slurm/slurm.conf; `up` links that path to DIR/etc/slurm.conf when it is
# free (or already such a link) and `down` removes the link again.
#
# Cluster: name "crci"; node "crci-node"; partitions "cpu" (default) and "gpu" on that node;
# accounts "root" and "research" (root belongs to both); GPU gres type "fake". The node claims
# SLURM_CI_CPUS (16) CPUs, SLURM_CI_MEM_MB (131072) MB and SLURM_CI_GPUS (2) GPUs whatever the
# host has (SlurmdParameters=config_overrides), so jobs sized for a GPU node fit unchanged.
set -euo pipefail

cmd=${1:-up}
DIR=${2:-${SLURM_CI_DIR:-/tmp/context-research-slurm}}
CLUSTER=crci
NODE=crci-node
ETC_CONF=/etc/slurm/slurm.conf
SCRIPT_SHA=$(sha256sum "$0" | cut -c1-16)
PACKAGES=(slurm-wlm munge slurmdbd mariadb-server)

log() { echo "slurm-ci: $*" >&2; }
die() { log "$*"; exit 1; }

export SLURM_CONF="$DIR/etc/slurm.conf"

require_root() { [ "$(id -u)" = 0 ] || die "must run as root (daemons, munge key ownership)"; }

install_packages() {
  local missing=0 bin
  for bin in munged slurmctld slurmd slurmdbd mariadbd mariadb-install-db sbatch sacct sacctmgr; do
    command -v "$bin" >/dev/null 2>&1 || missing=1
  done
  [ "$missing" = 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || { log "SLURM is not installed and apt-get is not available"; exit 3; }
  log "installing ${PACKAGES[*]}"
  # Without a policy-rc.d the postinst scripts would start munge/mariadb/slurm with the
  # system configuration; we start our own instances instead.
  local own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    own_policy=1
  fi
  local rc=0
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
             --no-install-recommends "${PACKAGES[@]}"; }; } >"${TMPDIR:-/tmp}/slurm-ci-apt.log" 2>&1 || rc=$?
  [ -n "$own_policy" ] && rm -f /usr/sbin/policy-rc.d
  [ "$rc" = 0 ] || { tail -20 "${TMPDIR:-/tmp}/slurm-ci-apt.log" >&2; log "apt-get install failed"; exit 3; }
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
  local limit=$1; shift 2
  local start=$SECONDS
  until "$@" >/dev/null 2>&1; do
    [ $((SECONDS - start)) -lt "$limit" ] || return 1
    sleep 0.5
  done
}

node_idle() { sinfo -h -n "$NODE" -o %T 2>/dev/null | grep -qx idle; }
node_usable() { sinfo -h -n "$NODE" -o %T 2>/dev/null | grep -Eqx 'idle|mixed|allocated'; }

is_up() {
  [ -f "$SLURM_CONF" ] || return 1
  [ "$(cat "$DIR/.slurm-ci" 2>/dev/null)" = "$SCRIPT_SHA" ] || return 1   # built by this version
  [ "$(readlink "$ETC_CONF" 2>/dev/null)" = "$SLURM_CONF" ] || return 1
  local p
  for p in munged mariadbd slurmdbd slurmctld slurmd; do pid_alive "$DIR/run/$p.pid" || return 1; done
  scontrol ping >/dev/null 2>&1 && node_usable && sacctmgr -n list cluster "$CLUSTER" format=cluster 2>/dev/null | grep -q "$CLUSTER"
}

stop_pid() {  # stop_pid NAME: TERM, then KILL after 20 s; only the PID we recorded
  local pidfile="$DIR/run/$1.pid" pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { log "$1 ($pid) ignored SIGTERM; killing"; kill -KILL "$pid" 2>/dev/null || true; }
  fi
  rm -f "$pidfile"
}

link_etc_conf() {
  if [ -e "$ETC_CONF" ] && [ ! -L "$ETC_CONF" ]; then
    die "$ETC_CONF exists and is not a link from an earlier run: a real SLURM install? Not touching it."
  fi
  mkdir -p "$(dirname "$ETC_CONF")"
  ln -sfn "$SLURM_CONF" "$ETC_CONF"
}

unlink_etc_conf() {
  [ -L "$ETC_CONF" ] && [ "$(readlink "$ETC_CONF")" = "$SLURM_CONF" ] && rm -f "$ETC_CONF"
  return 0
}

down() {
  if [ -f "$SLURM_CONF" ] && pid_alive "$DIR/run/slurmctld.pid"; then
    scancel --full --user root >/dev/null 2>&1 || true   # this cluster's jobs only (SLURM_CONF)
  fi
  local p
  for p in slurmd slurmctld slurmdbd mariadbd munged; do stop_pid "$p"; done
  unlink_etc_conf
}

write_configs() {
  local ctld_port=$1 slurmd_port=$2 dbd_port=$3 db_port=$4 db_pass=$5
  local cpus=${SLURM_CI_CPUS:-16} mem=${SLURM_CI_MEM_MB:-131072} gpus=${SLURM_CI_GPUS:-2}
  local host i gres_lines=""
  host=$(hostname -s)
  for i in $(seq 0 $((gpus - 1))); do
    : > "$DIR/gpus/fake-gpu$i"
    gres_lines+="NodeName=$NODE Name=gpu Type=fake File=$DIR/gpus/fake-gpu$i"$'\n'
  done
  printf '%s' "$gres_lines" > "$DIR/etc/gres.conf"
  : > "$DIR/etc/plugstack.conf"
  cat > "$SLURM_CONF" <<EOF
# Generated by scripts/slurm-ci.sh: single-node CI cluster, all state under $DIR.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
# The test suite runs as root, so root must be allowed to run jobs.
DisableRootJobs=NO
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket.2
CredType=cred/munge
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
PlugStackConfig=$DIR/etc/plugstack.conf
# No cgroups in containers: plain process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$dbd_port
# Clients talking to slurmdbd take the munge socket from here, not from AuthInfo.
AccountingStoragePass=$DIR/munge/munge.socket.2
AccountingStorageTRES=gres/gpu,gres/gpu:fake
JobCompType=jobcomp/none
# Keep sbatch --comment (the plugin writes rule_<name> there) in the accounting database.
AccountingStoreFlags=job_comment
# Finished jobs stay visible to squeue for 5 min (>= 3x the plugin's 40 s first status check).
MinJobAge=300
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$NODE NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem Gres=gpu:fake:$gpus State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE Default=NO MaxTime=INFINITE State=UP
EOF
  cat > "$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket.2
DbdHost=$host
DbdAddr=127.0.0.1
DbdPort=$dbd_port
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=$db_pass
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DIR/etc/slurmdbd.conf"   # slurmdbd refuses a readable file holding a password
}

up() {
  require_root
  install_packages
  if is_up; then
    log "already up ($DIR)"
    echo "export SLURM_CONF=$SLURM_CONF"
    return 0
  fi
  down   # a half-started cluster from an earlier run: stop what we recorded, start over
  if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR")" ] && [ ! -f "$DIR/.slurm-ci" ]; then
    die "$DIR is not empty and was not made by this script; pick another DIR"
  fi
  rm -rf "$DIR"
  mkdir -p "$DIR"/{etc,munge,mysql,spool/ctld,spool/d,log,run,gpus}
  chmod 700 "$DIR/munge"
  echo "$SCRIPT_SHA" > "$DIR/.slurm-ci"

  local ctld_port slurmd_port dbd_port db_port db_pass
  ctld_port=$(free_port); slurmd_port=$(free_port); dbd_port=$(free_port); db_port=$(free_port)
  db_pass=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
  write_configs "$ctld_port" "$slurmd_port" "$dbd_port" "$db_port" "$db_pass"
  link_etc_conf

  # munge: a fresh key, our own socket; --force because the socket dir lives under /tmp.
  head -c 1024 /dev/urandom > "$DIR/munge/munge.key"
  chmod 400 "$DIR/munge/munge.key"
  munged --force --num-threads=10 --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket.2" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
    --seed-file="$DIR/munge/munged.seed" 2>>"$DIR/log/munged.log"
  wait_for 20 munge sh -c "munge -n --socket='$DIR/munge/munge.socket.2' | unmunge --socket='$DIR/munge/munge.socket.2'" \
    || die "munged did not answer; see $DIR/log/munged.log"

  # MariaDB on 127.0.0.1:<free port> with its own datadir; root over the unix socket sets up
  # the slurm user.
  mariadb-install-db --no-defaults --user=root --datadir="$DIR/mysql/data" --skip-test-db \
    --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1 \
    || { tail -20 "$DIR/log/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
  local mysock="$DIR/mysql/mysqld.sock"
  (setsid mariadbd --no-defaults --user=root --datadir="$DIR/mysql/data" --socket="$mysock" \
     --pid-file="$DIR/run/mariadbd.pid" --port="$db_port" --bind-address=127.0.0.1 \
     --log-error="$DIR/log/mariadb.log" --skip-log-bin --innodb-buffer-pool-size=64M --innodb-log-file-size=16M \
     --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &)
  wait_for 60 mariadb mariadb --no-defaults --socket="$mysock" -uroot -e 'SELECT 1' \
    || { tail -20 "$DIR/log/mariadb.log" >&2; die "mariadbd did not come up"; }
  mariadb --no-defaults --socket="$mysock" -uroot -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$db_pass';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$db_pass';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
    FLUSH PRIVILEGES;"

  # slurmdbd reads slurmdbd.conf from the directory of SLURM_CONF.
  slurmdbd
  wait_for 90 slurmdbd sacctmgr -n list cluster \
    || { tail -20 "$DIR/log/slurmdbd.log" >&2; die "slurmdbd did not answer"; }
  sacctmgr -i add cluster "$CLUSTER" >/dev/null
  sacctmgr -i add account research Cluster="$CLUSTER" Description="context-research CI" Organization=ci >/dev/null
  sacctmgr -i add user root Account=research Cluster="$CLUSTER" >/dev/null

  slurmctld -f "$SLURM_CONF"
  wait_for 60 slurmctld scontrol ping || { tail -20 "$DIR/log/slurmctld.log" >&2; die "slurmctld did not answer"; }
  slurmd -f "$SLURM_CONF" -N "$NODE"
  wait_for 60 "node idle" node_idle || {
    scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
    wait_for 20 "node idle" node_idle
  } || { sinfo -N -l >&2; tail -20 "$DIR/log/slurmd.log" >&2; die "node $NODE did not become idle"; }
  log "up in ${SECONDS}s: cluster $CLUSTER, node $NODE, state in $DIR"
  echo "export SLURM_CONF=$SLURM_CONF"
}

case "$cmd" in
  up) up ;;
  down) require_root; down; log "stopped ($DIR)" ;;
  purge)
    require_root; down
    if [ -f "$DIR/.slurm-ci" ]; then rm -rf "$DIR"; log "stopped and removed $DIR"
    elif [ -e "$DIR" ]; then die "$DIR was not made by this script; not removing it"; fi ;;
  status) if is_up; then log "up ($DIR)"; else log "down ($DIR)"; exit 1; fi ;;
  env) echo "export SLURM_CONF=$SLURM_CONF" ;;
  -h|--help) sed -n '2,25p' "$0" ;;
  *) die "unknown command '$cmd' (up|down|purge|status|env)" ;;
esac
