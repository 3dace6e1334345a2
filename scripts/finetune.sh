#!/usr/bin/env bash
# Stage 3 (instruction tuning) with the DeepSpeed launcher. Everything else is in configs/stage_3.yaml.
#   GPUS=0,1,2,3 PORT=29501 OUTPUT_DIR=runs/stage_3 bash scripts/finetune.sh [key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
GPUS="${GPUS:-0}"
PORT="${PORT:-29500}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/stage_3}"
exec deepspeed --include "localhost:${GPUS}" --master_port "${PORT}" train.py \
  --config configs/stage_3.yaml train.output_dir="${OUTPUT_DIR}" "$@"
