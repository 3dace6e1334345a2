# Sourced by the stage scripts: run train.py under the DeepSpeed launcher, on this machine or on several.
#   this machine:  GPUS=0,1,2,3 [PORT=29500]
#   several nodes: HOSTFILE=hostfile MASTER_ADDR=<first node> [NNODES=2] [GPUS_PER_NODE=8] [LAUNCHER=pdsh] [PORT=29500]
# A hostfile has one line per node, "<host> slots=<gpus>" (DeepSpeed's format); every node needs this checkout, the
# datasets, the feature / caption caches and the output folder at the same paths (a shared filesystem).
launch_train() {
  local config="$1" output_dir="$2"
  shift 2
  local -a where
  if [[ -n "${HOSTFILE:-}" ]]; then
    if [[ ! -f "${HOSTFILE}" ]]; then
      echo "error: HOSTFILE=${HOSTFILE} does not exist; write one line per node: '<host> slots=<gpus>'" >&2
      exit 2
    fi
    if [[ -z "${MASTER_ADDR:-}" ]]; then
      echo "error: a HOSTFILE run needs MASTER_ADDR, the first node's address as every node reaches it" >&2
      exit 2
    fi
    if [[ -n "${GPUS:-}" ]]; then
      echo "error: GPUS picks GPUs of this machine only; with HOSTFILE give slots=<gpus> per node (or GPUS_PER_NODE)" >&2
      exit 2
    fi
    where=(--hostfile "${HOSTFILE}" --master_addr "${MASTER_ADDR}")
    if [[ -n "${NNODES:-}" ]]; then where+=(--num_nodes "${NNODES}"); fi
    if [[ -n "${GPUS_PER_NODE:-}" ]]; then where+=(--num_gpus "${GPUS_PER_NODE}"); fi
    if [[ -n "${LAUNCHER:-}" ]]; then where+=(--launcher "${LAUNCHER}"); fi
  else
    where=(--include "localhost:${GPUS:-0}")
  fi
  exec deepspeed "${where[@]}" --master_port "${PORT:-29500}" train.py \
    --config "${config}" train.output_dir="${output_dir}" "$@"
}

# The GPU this machine's one-process jobs (the feature cache) run on: the first of GPUS, else 0.
first_gpu() {
  local gpus="${GPUS:-0}"
  echo "${gpus%%,*}"
}
