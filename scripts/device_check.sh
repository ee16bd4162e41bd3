#!/usr/bin/env bash
# One short GPU check, JSON lines on stdout (< 8 minutes on one H100/H200):
#   1. the parity tests on the GPU (greedy sampler == full forward == transformers; decoder),
#   2. decode at the Qwen2.5-0.5B shape, batch 64, 256 prompt + 256 new tokens, bf16, with the
#      HBM-roofline fraction (scripts/bench_rollout.py),
#   3. the GRPO train step at the Qwen2.5-1.5B shape, 8 x 1024 tokens, bf16, with MFU
#      (scripts/bench_train_step.py).
# Every step runs under its own timeout and prints {"check": ..., "rc": ..., "seconds": ...}
# after its own JSON lines, so a failed step never hides the others.
#
#   scripts/device_check.sh               # on the GPU machine
#   scripts/device_check.sh --cpu-smoke   # the same steps at tiny shapes on the CPU (seconds)
#
# PY (default .venv/bin/python, else python3) selects the interpreter.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL=2

SMOKE=0
case "${1:-}" in
  --cpu-smoke) SMOKE=1 ;;
  "") ;;
  *) echo "usage: $0 [--cpu-smoke]" >&2; exit 2 ;;
esac

if [ "$SMOKE" = 1 ]; then
  export JAX_PLATFORMS=cpu
  TESTS=(tests/rollout/test_sampler.py -k "kv_length or in_place")
  DECODE=(--model-shape tiny --batch 4 --prompt-len 16 --new-tokens 16 --dtype float32 --repeats 1)
  TRAIN=(--model-shape tiny --batch 2 --seq 64 --dtype float32 --steps 1 --repeats 1)
  T_TESTS=300; T_DECODE=120; T_TRAIN=120
else
  export JAX_PLATFORMS=cuda   # tests/conftest.py defaults to cpu only when unset
  TESTS=(tests/rollout/test_hf_parity.py tests/rollout/test_sampler.py tests/models/test_decoder.py)
  DECODE=(--model-shape qwen2.5-0.5b --batch 64 --prompt-len 256 --new-tokens 256 --dtype bfloat16 --repeats 2)
  TRAIN=(--model-shape qwen2.5-1.5b --batch 8 --seq 1024 --dtype bfloat16 --steps 3 --repeats 2)
  T_TESTS=180; T_DECODE=120; T_TRAIN=150
fi

step() {  # step NAME TIMEOUT_S json|log CMD...: json keeps stdout, log sends it to stderr
  local name=$1 limit=$2 mode=$3; shift 3
  local t0=$SECONDS rc
  if [ "$mode" = json ]; then
    timeout "$limit" "$@" 2>/dev/null
  else
    timeout "$limit" "$@" 1>&2
  fi
  rc=$?
  printf '{"check": "%s", "rc": %d, "seconds": %d, "smoke": %s}\n' \
    "$name" "$rc" "$((SECONDS - t0))" "$([ "$SMOKE" = 1 ] && echo true || echo false)"
}

"$PY" - <<'PY'
import json, jax
d = jax.devices()[0]
print(json.dumps({"check": "devices", "platform": d.platform, "kind": d.device_kind,
                  "count": jax.device_count(), "jax": jax.__version__}))
PY
step parity_tests "$T_TESTS" log "$PY" -m pytest -q -x -p no:cacheprovider "${TESTS[@]}"
step decode "$T_DECODE" json "$PY" scripts/bench_rollout.py "${DECODE[@]}"
step train_step "$T_TRAIN" json "$PY" scripts/bench_train_step.py "${TRAIN[@]}"
