#!/usr/bin/env bash
# Stop the test cluster started by tests/slurm/setup.sh: slurmd, slurmctld and (if setup.sh
# started it) munged, each by its pid file under VCDFLOW_SLURM_STATE (default /tmp/vcdflow-slurm).
# Jobs still queued are cancelled first. Packages, keys and /etc/slurm stay (a later setup.sh is
# then fast). Safe to run twice.
set -uo pipefail

STATE=${VCDFLOW_SLURM_STATE:-/tmp/vcdflow-slurm}

stop() {  # stop NAME PIDFILE
  local pidfile=$2 pid
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    echo "slurm-teardown: stopping $1 (pid $pid)" >&2
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$pidfile"
}

if [ -s "$STATE/slurmctld.pid" ] && command -v scancel >/dev/null; then
  scancel --full --partition=debug >/dev/null 2>&1 || true   # every job of the test partition
fi
# Processes of this cluster's jobs that outlived them (they carry the cluster name).
for env in /proc/[0-9]*/environ; do
  if { tr '\0' '\n' <"$env"; } 2>/dev/null | grep -qx 'SLURM_CLUSTER_NAME=vcdflowtest'; then
    pid=${env#/proc/}; pid=${pid%/environ}
    echo "slurm-teardown: killing leftover job process $pid" >&2
    kill -9 "$pid" 2>/dev/null || true
  fi
done
stop slurmd "$STATE/slurmd.pid"
stop slurmctld "$STATE/slurmctld.pid"
stop munged "$STATE/munge/munged.pid"
exit 0
