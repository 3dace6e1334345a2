#!/usr/bin/env bash
# Stage 1 (encoder-side alignment) with the DeepSpeed launcher. Everything else is in configs/stage_1.yaml.
#   GPUS=0,1,2,3 PORT=29501 OUTPUT_DIR=runs/stage_1 bash scripts/pretrain_enc.sh [key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
GPUS="${GPUS:-0}"
PORT="${PORT:-29500}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/stage_1}"
exec deepspeed --include "localhost:${GPUS}" --master_port "${PORT}" train.py \
  --config configs/stage_1.yaml train.output_dir="${OUTPUT_DIR}" "$@"
