#!/usr/bin/env bash
# Stage 1 (encoder-side alignment) with the DeepSpeed launcher. Everything else is in configs/stage_1.yaml.
#   GPUS=0,1,2,3 PORT=29501 OUTPUT_DIR=runs/stage_1 bash scripts/pretrain_enc.sh [key=value ...]
#   HOSTFILE=hostfile MASTER_ADDR=node0 ... for several nodes (scripts/launch.sh)
# FEATURE_CACHE=data/features: first encode the stage's media once with the frozen ImageBind (preprocess_features.py,
# on the first GPU; resumable, so a finished cache costs only a file check), then train from the cached vectors.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/launch.sh
OUTPUT_DIR="${OUTPUT_DIR:-runs/stage_1}"
if [[ -n "${FEATURE_CACHE:-}" ]]; then
  CUDA_VISIBLE_DEVICES="$(first_gpu)" python preprocess_features.py --config configs/stage_1.yaml \
    --cache-dir "${FEATURE_CACHE}" "$@"
  set -- data.feature_cache_dir="${FEATURE_CACHE}" "$@"
fi
launch_train configs/stage_1.yaml "${OUTPUT_DIR}" "$@"
