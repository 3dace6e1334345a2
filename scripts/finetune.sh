#!/usr/bin/env bash
# Stage 3 (instruction tuning) with the DeepSpeed launcher. Everything else is in configs/stage_3.yaml.
#   GPUS=0,1,2,3 PORT=29501 OUTPUT_DIR=runs/stage_3 bash scripts/finetune.sh [key=value ...]
#   HOSTFILE=hostfile MASTER_ADDR=node0 ... for several nodes (scripts/launch.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/launch.sh
OUTPUT_DIR="${OUTPUT_DIR:-runs/stage_3}"
launch_train configs/stage_3.yaml "${OUTPUT_DIR}" "$@"
