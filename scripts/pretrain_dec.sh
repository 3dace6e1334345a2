#!/usr/bin/env bash
# Stage 2 (decoder-side alignment) with the DeepSpeed launcher. Everything else is in configs/stage_2.yaml.
#   GPUS=0,1,2,3 PORT=29501 OUTPUT_DIR=runs/stage_2 bash scripts/pretrain_dec.sh [key=value ...]
#   HOSTFILE=hostfile MASTER_ADDR=node0 ... for several nodes (scripts/launch.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/launch.sh
OUTPUT_DIR="${OUTPUT_DIR:-runs/stage_2}"
launch_train configs/stage_2.yaml "${OUTPUT_DIR}" "$@"
