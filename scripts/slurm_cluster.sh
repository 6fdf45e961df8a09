#!/usr/bin/env bash
# A real single-node SLURM cluster (munged + slurmctld + slurmd), run as root without systemd, to
# test the submitit path of sweeps (hydra/launcher=slurm) on one machine.
#
#   sudo bash scripts/slurm_cluster.sh start [STATE_DIR]   # install if missing, configure, start
#   source STATE_DIR/env.sh                                 # SLURM_CONF and PATH for sbatch/squeue
#   python -m imm.main -m hydra/launcher=slurm method=imm,vanilla
#   bash scripts/slurm_cluster.sh status [STATE_DIR]        # exit 0 only if all three daemons run
#   sudo bash scripts/slurm_cluster.sh stop [STATE_DIR]     # cancel jobs, stop each daemon by pid
#
# STATE_DIR (default outputs/slurm) holds everything: slurm.conf, its own munge key and socket,
# spool/state folders, logs, pid files, and bin/sacct (a stand-in, see scripts/slurm/sacct).
# `start` is idempotent (a running cluster is reused) and starts slurmctld with -c (clean state):
# job ids can start again at 1 (always in a new STATE_DIR): never reuse a submitit folder.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
CMD="${1:-}"
STATE="${2:-outputs/slurm}"
DAEMONS=(slurmd slurmctld munged)  # stop order; start order is the reverse

die() { echo "slurm_cluster: $*" >&2; exit "${RC:-1}"; }

[ -n "$CMD" ] || die "usage: $0 start|stop|status [STATE_DIR]"
STATE="$(realpath -m "$STATE")"
CONF="$STATE/slurm.conf"
# munged wants every folder above its socket open to all (pytest's tmp dirs are 0700) and a socket
# path holds at most 107 bytes: the socket lives in a short folder of its own under /tmp
SOCK_DIR="/tmp/imm-munge-$(printf %s "$STATE" | cksum | cut -d' ' -f1)"
SOCK="$SOCK_DIR/munge.sock"
export SLURM_CONF="$CONF"

pidfile() { echo "$STATE/run/$1.pid"; }

# The pid of a daemon if its pid file names a live process of that name (pids get recycled).
live_pid() {
  local f pid
  f="$(pidfile "$1")"
  [ -s "$f" ] || return 1
  pid="$(cat "$f")"
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] || return 1
  echo "$pid"
}

running() { local d; for d in "${DAEMONS[@]}"; do live_pid "$d" >/dev/null || return 1; done; }

install_if_missing() {
  local cmd missing=0 log="$STATE/log/apt.log"
  for cmd in slurmctld slurmd sinfo sbatch munged mungekey; do command -v "$cmd" >/dev/null || missing=1; done
  [ "$missing" = 0 ] && return 0
  command -v apt-get >/dev/null || RC=2 die "slurmctld/slurmd/munge are missing and there is no apt-get"
  local pkgs=(slurmctld slurmd slurm-client munge)
  export DEBIAN_FRONTEND=noninteractive
  # a fresh machine has no package lists yet: update only when the plain install fails
  apt-get install -y -q --no-install-recommends "${pkgs[@]}" >"$log" 2>&1 ||
    { apt-get update -q && apt-get install -y -q --no-install-recommends "${pkgs[@]}"; } >>"$log" 2>&1 ||
    RC=2 die "apt-get install ${pkgs[*]} failed (see $log): $(tail -3 "$log")"
}

write_conf() {
  local node ports
  # the node exactly as slurmd sees it (CPUs, sockets, cores, memory), minus the UpTime line
  node="$(slurmd -C | head -1)"
  node="${node%% *} NodeAddr=127.0.0.1 ${node#* }"  # no DNS lookup of the host name
  # two free ports, so this cluster can run beside another one (e.g. a test's) on the same host
  ports="$("$(command -v python3 || command -v python)" -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')"
  read -r CTLD_PORT SLURMD_PORT <<<"$ports"
  cat >"$CONF" <<EOF
# Written by scripts/slurm_cluster.sh: a one-node cluster, root only, no systemd, no accounting.
ClusterName=imm
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# its own munge daemon; cred_expire=10 s lets a requeued job start again after ~10 s, not 120 s
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK,cred_expire=10
# CR_Core: a job that names no memory must not take the whole node (it would with CR_Core_Memory)
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=5
# finished jobs stay visible to squeue (and so to the sacct stand-in) for an hour
MinJobAge=3600
# schedule every 2 s instead of the default 60 s backfill cycle: requeues restart quickly
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit="$1" what="$2" i
  shift 2
  for ((i = 0; i < limit * 10; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "timed out after ${limit}s waiting for $what (logs in $STATE/log)"
}

node_idle() { [ "$(sinfo -h -o %t 2>/dev/null)" = "idle" ]; }

print_env() {  # $PATH stays literal: env.sh extends the PATH of whoever sources it
  # shellcheck disable=SC2016
  printf 'export SLURM_CONF=%q\nexport PATH=%q:"$PATH"\n' "$CONF" "$STATE/bin" >"$STATE/env.sh"
  cat "$STATE/env.sh"
}

start() {
  if running; then print_env; return 0; fi
  [ "$(id -u)" = 0 ] || RC=2 die "start needs root (slurmd runs jobs as any user)"
  mkdir -p "$STATE"/{munge,ctld,spool,log,run,bin}
  install_if_missing
  stop >/dev/null 2>&1 || true  # a half-started cluster: clear it first
  mkdir -p "$SOCK_DIR"
  chmod 700 "$STATE/munge"
  chmod 755 "$SOCK_DIR"  # clients of any user reach the socket
  rm -f "$STATE"/run/*.pid
  [ -s "$STATE/munge/munge.key" ] || mungekey -c -k "$STATE/munge/munge.key"
  chmod 400 "$STATE/munge/munge.key"
  install -m 755 "$HERE/slurm/sacct" "$STATE/bin/sacct"
  write_conf
  munged --key-file="$STATE/munge/munge.key" --socket="$SOCK" --pid-file="$(pidfile munged)" \
    --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/seed"
  wait_for 10 munged live_pid munged
  slurmctld -c -f "$CONF"
  wait_for 20 slurmctld live_pid slurmctld  # daemons write pid files only after forking
  slurmd -f "$CONF"
  wait_for 20 slurmd live_pid slurmd
  wait_for 30 "an idle node" node_idle
  print_env
}

stop() {
  local i
  if live_pid slurmctld >/dev/null && live_pid slurmd >/dev/null; then
    # cancel this cluster's jobs and let slurmstepd end them (KillWait=5) before slurmd goes
    squeue -h -t PD,R,S -o %i 2>/dev/null | xargs -r scancel 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do [ -z "$(squeue -h -t R,CG -o %i 2>/dev/null)" ] && break; sleep 0.1; done
  fi
  # slurm daemons first (together: each takes ~2 s to exit), munged last since they talk to it
  stop_daemons slurmd slurmctld
  stop_daemons munged
  rm -rf "$SOCK_DIR"
}

stop_daemons() {  # TERM each by its pid file, wait up to 10 s, then KILL
  local d pid i pids=()
  for d in "$@"; do
    pid="$(live_pid "$d")" || continue
    kill -TERM "$pid" && pids+=("$pid") && echo "stopping $d ($pid)"
  done
  for pid in "${pids[@]}"; do
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  done
  for d in "$@"; do rm -f "$(pidfile "$d")"; done
}

status() {
  local d pid rc=0
  for d in "${DAEMONS[@]}"; do
    if pid="$(live_pid "$d")"; then echo "$d running ($pid)"; else echo "$d stopped"; rc=3; fi
  done
  [ "$rc" = 0 ] && sinfo && squeue
  return "$rc"
}

case "$CMD" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "unknown command '$CMD' (start|stop|status)" ;;
esac
