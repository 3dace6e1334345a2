#!/usr/bin/env bash
# Stage 2 (decoder-side alignment) with the DeepSpeed launcher. Everything else is in configs/stage_2.yaml.
#   GPUS=0,1,2,3 PORT=29501 OUTPUT_DIR=runs/stage_2 bash scripts/pretrain_dec.sh [key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
GPUS="${GPUS:-0}"
PORT="${PORT:-29500}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/stage_2}"
exec deepspeed --include "localhost:${GPUS}" --master_port "${PORT}" train.py \
  --config configs/stage_2.yaml train.output_dir="${OUTPUT_DIR}" "$@"
