"""Stage 3 on a Vicuna-7B-shaped LLM with random weights (bf16, ZeRO-2, LoRA r32 on q,k,v,o): tokens/s and peak memory,
with gradient checkpointing on and off. Speed does not depend on weight values, so random weights measure the real cost.

Everything goes through the real loaders: an HF LLaMA folder (7B shapes, 32000-token vocabulary), an ImageBind-Huge
`.pth` with the official key layout, the synthetic world in the official JSON formats, `nextgpt.training.loop.run`.

    python bench/stage3_check.py --work /tmp/stage3 --steps 25 --out stage3_check.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.components import SMOKE, VICUNA_7B, llama_config  # noqa: E402

TINY = SMOKE.llm
"""`--smoke` shapes: the same script end to end on a CPU in a minute."""


def write_vicuna_shaped_llm(out_dir: Path, shape: dict, device: str) -> Path:
    """A 7B-shaped LLaMA folder: the tiny sentencepiece tokenizer padded to 32000 tokens, random bf16 weights."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from nextgpt.tiny.llm import write_tiny_llm

    if (out_dir / "config.json").is_file() and any(out_dir.glob("*.safetensors")):
        return out_dir
    write_tiny_llm(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    tokenizer.add_tokens([f"<pad_{i:05d}>" for i in range(shape["vocab_size"] - len(tokenizer))])
    tokenizer.save_pretrained(out_dir)
    config = llama_config(shape, torch_dtype="bfloat16")
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    for stale in out_dir.glob("model*.safetensors"):
        stale.unlink()
    model.save_pretrained(out_dir)
    del model
    torch.cuda.empty_cache()
    return out_dir


def prepare(work: Path, smoke: bool) -> list[str]:
    """Write every input once; return the config overrides pointing at them."""
    from nextgpt.config import ImageBindConfig, load_config
    from nextgpt.data.datasets import expected_caption_shapes
    from nextgpt.tiny.data import write_random_caption_embeddings, write_synthetic_world
    from nextgpt.tiny.imagebind import write_tiny_imagebind

    llm_dir = write_vicuna_shaped_llm(
        work / "vicuna-7b-shaped", TINY if smoke else VICUNA_7B, "cpu" if smoke else "cuda"
    )
    imagebind = work / "imagebind_huge_random.pth"
    encoder_cfg = load_config("configs/tiny.yaml").model.encoder if smoke else ImageBindConfig()
    if not imagebind.is_file():
        write_tiny_imagebind(imagebind, encoder_cfg)
    catalog = work / "world" / "datasets.yaml"
    if not catalog.is_file():
        write_synthetic_world(work / "world", num_train=128, num_eval=1)
        shapes = expected_caption_shapes(load_config().model.output_projectors)
        write_random_caption_embeddings(catalog, shapes)
    paths = [
        f"model.llm.model_path={llm_dir}",
        f"model.encoder.checkpoint_path={imagebind}",
        f"data.catalog_path={catalog}",
    ]
    if smoke:
        sizes = (
            "out_embed_dim",
            "vision_embed_dim",
            "vision_num_blocks",
            "vision_num_heads",
            "audio_embed_dim",
            "audio_num_blocks",
            "audio_num_heads",
        )
        paths += [f"model.encoder.{k}={getattr(encoder_cfg, k)}" for k in sizes]
        paths += ["train.precision=fp32", "model.llm.dtype=float32", "model.encoder.dtype=float32"]
    return paths


def measure(paths: list[str], work: Path, steps: int, checkpointing: bool, micro_batch: int) -> dict:
    from nextgpt.config import load_config
    from nextgpt.training.loop import run

    out_dir = work / f"run_ckpt_{int(checkpointing)}"
    overrides = [
        *paths,
        f"model.llm.gradient_checkpointing={str(checkpointing).lower()}",
        f"train.max_steps={steps}",
        f"train.output_dir={out_dir}",
        "train.save_every=100000",
        "train.init_from=",
        "train.resume=false",
        f"train.micro_batch_size={micro_batch}",
        "train.log_every=5",
        "data.num_workers=4",
        "train.tensorboard=false",
    ]
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "stage_3.yaml", overrides=overrides)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run(cfg)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [r["tokens_per_s"] for r in records[5:]] or [r["tokens_per_s"] for r in records]
    return {
        "gradient_checkpointing": checkpointing,
        "steps": len(records),
        "micro_batch_size": micro_batch,
        "tokens_per_s_median": statistics.median(steady),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "wall_s": wall,
        "final_loss": records[-1]["loss"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/stage3_check"))
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("stage3_check.json"))
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks the script, measures nothing")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        print("error: this check needs a CUDA GPU", file=sys.stderr)
        return 2
    from nextgpt.utils.logging import setup_logging

    setup_logging()
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    paths = prepare(args.work, args.smoke)
    report = {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (smoke)",
        "prepare_s": time.perf_counter() - t0,
        "runs": [],
    }
    for checkpointing in (True, False):
        report["runs"].append(measure(paths, args.work, args.steps, checkpointing, args.micro_batch))
        print(json.dumps(report["runs"][-1]), flush=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
