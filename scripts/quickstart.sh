#!/usr/bin/env bash
# The tiny world end to end on CPU, in the real formats and through the real entry points:
# tiny checkpoints + synthetic data -> caption embeddings -> stages 1 -> 2 -> 3 (train.py under DeepSpeed)
# -> LoRA merge -> predict.py for text->image, image->text, text->video and text->audio.
#
#   make quickstart                        # creates .venv first, then runs this
#   bash scripts/quickstart.sh             # with an existing .venv (PYTHON=... picks another interpreter)
#   TINY_RUNS=/tmp/runs QUICKSTART_OUT=/tmp/out bash scripts/quickstart.sh
#
# Finished steps are reused on a re-run (delete runs/tiny to train again); the step times are printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
CKPT=${TINY_CKPT:-checkpoints/tiny}
DATA=${TINY_DATA:-data/tiny}
RUNS=${TINY_RUNS:-runs/tiny}
OUT=${QUICKSTART_OUT:-outputs/quickstart}
RUN_NAME=predict-$(date +%Y%m%d-%H%M%S)  # predict.py writes each run into a new sub-folder of --output-dir
LAUNCHER=${LAUNCHER:-deepspeed}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false GRADIO_ANALYTICS_ENABLED=False

CATALOG="$DATA/datasets.yaml"
PATHS=(
  "model.llm.model_path=$CKPT/llm"
  "model.encoder.checkpoint_path=$CKPT/imagebind/imagebind_tiny.pth"
  "model.decoders.image.pipeline_path=$CKPT/decoders/sd"
  "model.decoders.video.pipeline_path=$CKPT/decoders/zeroscope"
  "model.decoders.audio.pipeline_path=$CKPT/decoders/audioldm"
)
EMBED_DATASETS=(cc3m_dec webvid_dec audiocap_dec image_instruction video_instruction audio_instruction mosit_instruction)
TIMES=()
START=$SECONDS

step() {  # step <name> <command...>: run and record its wall time
  local name=$1 begin=$SECONDS
  shift
  echo "==> $name"
  "$@"
  TIMES+=("$(printf '%-28s %4d s' "$name" $((SECONDS - begin)))")
}

train_stage() {  # train_stage <N>: one stage through train.py, chained to the previous stage's final checkpoint
  local n=$1 init=()
  if [[ -f "$RUNS/stage_$n/final/config.yaml" ]]; then
    echo "reusing $RUNS/stage_$n/final (delete $RUNS to train again)"
    return
  fi
  [[ $n -gt 1 ]] && init=("train.init_from=$RUNS/stage_$((n - 1))/final")
  if [[ $LAUNCHER == deepspeed ]]; then
    "$(dirname "$PYTHON")/deepspeed" --num_gpus 1 train.py --config "configs/tiny_stage_$n.yaml" "${PATHS[@]}" \
      "data.catalog_path=$CATALOG" "train.output_dir=$RUNS/stage_$n" "${init[@]}"
  else
    "$PYTHON" train.py --config "configs/tiny_stage_$n.yaml" "${PATHS[@]}" \
      "data.catalog_path=$CATALOG" "train.output_dir=$RUNS/stage_$n" "${init[@]}"
  fi
}

build_checkpoints() {
  if [[ -f "$CKPT/llm/config.json" && -f "$CKPT/imagebind/imagebind_tiny.pth" && -f "$CKPT/decoders/audioldm/model_index.json" ]]; then
    echo "reusing $CKPT"
  else
    "$PYTHON" -m nextgpt.cli.build_tiny --out "$CKPT"
  fi
}

build_world() {
  if [[ -f "$CATALOG" ]]; then echo "reusing $DATA"; else "$PYTHON" -m nextgpt.cli.make_tiny_world --out "$DATA"; fi
}

cache_embeddings() {
  local names=("${EMBED_DATASETS[@]}")
  names+=("${EMBED_DATASETS[@]/%/_eval}")
  "$PYTHON" preprocess_embeddings.py --config configs/tiny.yaml --catalog "$CATALOG" --datasets "${names[@]}" \
    --device cpu "${PATHS[@]}"
}

merge() {
  if [[ -f "$RUNS/merged/config.yaml" ]]; then echo "reusing $RUNS/merged"; return; fi
  "$PYTHON" merge_lora_weights.py --checkpoint-dir "$RUNS/stage_3/final" --output-dir "$RUNS/merged"
}

predict() {
  mkdir -p "$OUT"
  local image
  image=$(cd "$DATA/T_X_pair_data/cc3m/images" && pwd)/eval_img_00000.png
  cat > "$OUT/requests.jsonl" <<JSON
{"id": "text_to_image", "prompt": "Please generate a image of a red circle on the left."}
{"id": "image_to_text", "prompt": "What is shown in the image?", "image": ["$image"]}
{"id": "text_to_video", "prompt": "Please generate a video of a blue square moving up."}
{"id": "text_to_audio", "prompt": "Please generate a sound of a beeping high tone."}
JSON
  "$PYTHON" predict.py --checkpoint-dir "$RUNS/merged" --batch "$OUT/requests.jsonl" --output-dir "$OUT" \
    --run-name "$RUN_NAME" --no-stream --temperature 0
}

show_outputs() {
  "$PYTHON" - "$OUT/$RUN_NAME/summary.json" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
for result in summary["results"]:
    files = ", ".join(o["path"] for o in result["outputs"]) or "(no media)"
    print(f"{result['id']:14s} reply: {result['text']!r}  files: {files}")
PY
}

step "tiny checkpoints" build_checkpoints
step "synthetic world" build_world
step "caption embeddings" cache_embeddings
step "stage 1 (encoder side)" train_stage 1
step "stage 2 (decoder side)" train_stage 2
step "stage 3 (instructions)" train_stage 3
step "merge LoRA" merge
step "predict (4 requests)" predict

echo
echo "==> outputs in $OUT/$RUN_NAME (summary.json lists them)"
show_outputs
echo
echo "==> step times"
printf '%s\n' "${TIMES[@]}"
printf '%-28s %4d s\n' "total" $((SECONDS - START))
echo "evaluate: $PYTHON -m nextgpt.cli.evaluate --checkpoint-dir $RUNS/stage_1/final $RUNS/stage_2/final $RUNS/stage_3/final"
