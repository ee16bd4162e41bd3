#!/usr/bin/env bash
# Starts N local JAX processes of `toolrl-jax` on this machine, each with K CPU devices, joined
# by jax.distributed (gloo CPU collectives): a multi-host run without the hosts, for testing.
#
#   scripts/launch_local.sh N [toolrl-jax args...]
#   scripts/launch_local.sh 2 train --config configs/tiny.yaml train.out_dir=runs/mh
#
# Environment: DEVICES_PER_PROCESS (K, default 4), PORT (coordinator port, default a free one),
# TOOLRL_JAX (the command, default "python -m toolrl_jax.cli"), LOG_DIR (default: none; with it
# process p writes LOG_DIR/process_p.log, else its output is prefixed with "[p]").
# The exit status is the first non-zero status of the processes (0 when all succeed).
set -euo pipefail

if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ || "$1" -lt 1 ]]; then
  echo "usage: $0 NUM_PROCESSES [toolrl-jax args...]" >&2
  exit 2
fi
num="$1"; shift
devices="${DEVICES_PER_PROCESS:-4}"
port="${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
read -r -a cmd <<< "${TOOLRL_JAX:-python -m toolrl_jax.cli}"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup INT TERM

for ((p = 0; p < num; p++)); do
  (
    export JAX_PLATFORMS=cpu
    export JAX_COORDINATOR_ADDRESS="127.0.0.1:${port}"
    export JAX_NUM_PROCESSES="${num}"
    export JAX_PROCESS_ID="${p}"
    export XLA_FLAGS="--xla_force_host_platform_device_count=${devices} ${XLA_FLAGS:-}"
    if [[ -n "${LOG_DIR:-}" ]]; then
      mkdir -p "${LOG_DIR}"
      exec "${cmd[@]}" "$@" > "${LOG_DIR}/process_${p}.log" 2>&1
    else
      exec "${cmd[@]}" "$@" 2>&1 | sed -u "s/^/[${p}] /"
    fi
  ) &
  pids+=("$!")
done

status=0
for pid in "${pids[@]}"; do
  rc=0
  wait "$pid" || rc=$?
  if [[ $status -eq 0 && $rc -ne 0 ]]; then status=$rc; fi
done
exit "$status"
