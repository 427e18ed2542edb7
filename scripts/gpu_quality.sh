#!/usr/bin/env bash
# The GPU quality run on one H100 (~17 minutes in all): teacher (~5 min) -> hypernetwork (~6 min)
# -> prompt-agnostic baseline (~5 min) -> table. A stage whose output exists is skipped, so the
# script can be run again to continue, or stage by stage within a time limit.
# Usage: bash scripts/gpu_quality.sh [OUT_DIR]   (each stage's report is copied to OUT_DIR as soon as it exists)
set -euo pipefail
export PYTHONUNBUFFERED=1
out=${1:-/tmp/quality}
mkdir -p "$out"
train() { python3 scripts/train.py experiment=gpu logger=jsonl trainer.progress=false trainer.eval_every=0 trainer.save_every=0 "$@"; }
[ -f runs/teacher-gpu/config.json ] || python3 scripts/pretrain_teacher.py --preset gpu --out runs/teacher-gpu --device cuda
cp runs/teacher-gpu/teacher_report.json "$out"/
[ -f runs/hyperlora-gpu/final_metrics.json ] || train trainer.out_dir=runs/hyperlora-gpu
cp runs/hyperlora-gpu/final_metrics.json "$out"/ && cp runs/hyperlora-gpu/metrics.jsonl "$out"/hyperlora_metrics.jsonl
[ -f runs/baseline-gpu/final_metrics.json ] || train prompt_agnostic=true trainer.out_dir=runs/baseline-gpu
cp runs/baseline-gpu/final_metrics.json "$out"/baseline_final_metrics.json
python3 scripts/quality_table.py runs/hyperlora-gpu runs/baseline-gpu | tee "$out"/quality_table.md
