#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this (Debian) machine, for tests/test_slurm.py.
#
#   sudo tests/slurm/setup.sh      # idempotent: a running, idle cluster is left as it is
#   sudo tests/slurm/teardown.sh   # stops the daemons this script started (pid files)
#
# What it does (recipe measured in shared/spec/slurm-local.md):
#   1. installs the Debian packages slurm-wlm and munge when slurmctld/slurmd/munged are missing;
#   2. creates a munge key (1024 random bytes, owner munge, mode 400) when there is none and
#      starts munged unless `munge -n | unmunge` already works;
#   3. writes /etc/slurm/slurm.conf and gres.conf for one node named `hostname`, with 4 fake
#      GPUs: character devices /dev/fakegpu0..3 (mknod c 1 3, i.e. /dev/null's numbers) that
#      slurmd hands out through CUDA_VISIBLE_DEVICES exactly as it does real GPUs;
#   4. starts slurmctld and slurmd and waits until `sinfo` shows the node idle.
#
# The node is declared like a typical 4-GPU node (16 CPUs, 128 GiB, 4 GPUs) whatever the machine
# has (`SlurmdParameters=config_overrides`), so the workflow's real SLURM profile, whose GPU jobs
# ask for 4 CPUs and 32 GB each, schedules here unchanged. Nothing enforces those limits
# (no cgroups, no memory accounting): it is a scheduler for tests, not for real work.
#
# It refuses to overwrite a slurm.conf it did not write (marker line below): on a machine with
# a real SLURM set-up it exits 4 and changes nothing.
#
# Exit codes: 0 cluster up; 2 not root; 3 packages missing and apt-get failed;
#             4 foreign slurm.conf; 5 a daemon did not come up (its log is printed).
# Environment: VCDFLOW_SLURM_STATE (default /tmp/vcdflow-slurm) holds pid files and daemon logs;
#              VCDFLOW_SLURM_TIMEOUT (default 60) seconds to wait for the idle node.
set -euo pipefail

STATE=${VCDFLOW_SLURM_STATE:-/tmp/vcdflow-slurm}
TIMEOUT=${VCDFLOW_SLURM_TIMEOUT:-60}
MARKER="# written by vcdflow tests/slurm/setup.sh"
CONF_DIR=/etc/slurm
NODE=$(hostname -s)
NGPU=4

say() { echo "slurm-setup: $*" >&2; }
die() { local code=$1; shift; say "error: $*"; exit "$code"; }

[ "$(id -u)" -eq 0 ] || die 2 "must run as root (installs packages, writes /etc/slurm, mknod)"

# ---------------------------------------------------------------- 1. packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  command -v apt-get >/dev/null || die 3 "slurm-wlm/munge missing and apt-get unavailable"
  say "installing slurm-wlm and munge (apt-get)"
  # policy-rc.d keeps the packages' init scripts from starting daemons themselves (exit 101 =
  # "action forbidden"); we start them below, with our configuration. Removed again afterwards.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
  fi
  ok=1
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends slurm-wlm munge >/dev/null; } || ok=0
  [ "$own_policy" -eq 1 ] && rm -f "$policy"
  [ "$ok" -eq 1 ] || die 3 "apt-get install slurm-wlm munge failed"
fi

mkdir -p "$STATE"

running() {  # running PIDFILE: the process in the pid file is alive
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# ---------------------------------------------------------------- 2. munge
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
chown munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge 2>/dev/null || true
chmod 700 /etc/munge
if [ ! -s /etc/munge/munge.key ]; then
  say "creating /etc/munge/munge.key"
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "starting munged"
  # As the munge user: munged refuses to run as root without --force.
  mkdir -p "$STATE/munge" && chown munge:munge "$STATE/munge"   # munged writes its pid file there
  runuser -u munge -- munged --pid-file="$STATE/munge/munged.pid" || die 5 "munged did not start"
  for _ in $(seq 50); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.1
  done
  munge -n | unmunge >/dev/null || die 5 "munge credentials do not round-trip"
fi

# ---------------------------------------------------------------- 3. configuration
mkdir -p "$CONF_DIR"
if [ -e "$CONF_DIR/slurm.conf" ] && ! grep -qF "$MARKER" "$CONF_DIR/slurm.conf"; then
  die 4 "$CONF_DIR/slurm.conf exists and was not written by this script; not touching it"
fi
for i in $(seq 0 $((NGPU - 1))); do
  [ -c "/dev/fakegpu$i" ] || { rm -f "/dev/fakegpu$i"; mknod "/dev/fakegpu$i" c 1 3; }
done
mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm

new_conf=$(cat <<EOF
$MARKER
ClusterName=vcdflowtest
SlurmctldHost=$NODE
AuthType=auth/munge
# process groups: a job process orphaned by its shell is still killed by scancel
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# squeue must still see finished jobs when Snakemake polls (no sacct without slurmdbd)
MinJobAge=3600
# fast scheduling and a short grace period after scancel (default 30 s)
SchedulerParameters=sched_interval=1
KillWait=5
# jobs without --mem get 1 GB per CPU, not the whole node (which would serialise them)
DefMemPerCPU=1000
# take the node's resources from this file, not from the hardware
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=$NODE CPUs=16 RealMemory=131072 Gres=gpu:$NGPU State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
new_gres="$MARKER
NodeName=$NODE Name=gpu File=/dev/fakegpu[0-$((NGPU - 1))]"

changed=0
if [ "$(cat "$CONF_DIR/slurm.conf" 2>/dev/null)" != "$new_conf" ]; then
  printf '%s\n' "$new_conf" >"$CONF_DIR/slurm.conf"; changed=1
fi
if [ "$(cat "$CONF_DIR/gres.conf" 2>/dev/null)" != "$new_gres" ]; then
  printf '%s\n' "$new_gres" >"$CONF_DIR/gres.conf"; changed=1
fi

# ---------------------------------------------------------------- 4. daemons
stop() {  # stop PIDFILE: end the daemon in it and wait for it to exit
  if running "$1"; then
    local pid; pid=$(cat "$1")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$1"
}
if [ "$changed" -eq 1 ]; then  # a new configuration needs fresh daemons
  stop "$STATE/slurmd.pid"; stop "$STATE/slurmctld.pid"
fi
if ! running "$STATE/slurmctld.pid"; then
  say "starting slurmctld"
  slurmctld || { tail -20 "$STATE/slurmctld.log" >&2 || true; die 5 "slurmctld did not start"; }
fi
if ! running "$STATE/slurmd.pid"; then
  say "starting slurmd"
  slurmd || { tail -20 "$STATE/slurmd.log" >&2 || true; die 5 "slurmd did not start"; }
fi

say "waiting for node $NODE to become idle"
deadline=$((SECONDS + TIMEOUT))
state=""
while [ $SECONDS -lt $deadline ]; do
  state=$(sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -1 || true)
  case "$state" in
    idle|mixed|allocated) break ;;
    down*|drain*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 0.5
done
case "$state" in
  idle|mixed|allocated) ;;
  *) tail -20 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
     die 5 "node $NODE not idle after ${TIMEOUT}s (state: '${state:-no answer}')" ;;
esac
say "cluster up: $(sinfo -h -o '%P %D %T %G' | head -1)"
