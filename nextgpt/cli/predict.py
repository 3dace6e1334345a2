"""Any-to-any inference from the command line: prompt + media files in, text (streamed) + PNG / MP4 / WAV files out.

python predict.py --checkpoint-dir runs/stage_3/final --prompt "Please generate an image of a red fox."
python predict.py --checkpoint-dir checkpoints/nextgpt-7b-merged --image cat.jpg --prompt "Turn this into a video."
python predict.py --checkpoint-dir runs/stage_3/final --conversation chat.json --prompt "Now the sound of it."
python predict.py --checkpoint-dir runs/stage_3/final --batch requests.jsonl --low-memory --dtype float16
python predict.py --checkpoint-dir runs/stage_3/final --prompt "Draw a cat." --fast-decode   # static cache + CUDA graphs

Files given without a placeholder in the prompt are put in front of it, one `<image>`/`<video>`/`<audio>` per file.
Per-modality decoder settings beyond the flags: pass config overrides, e.g. model.decoders.audio.guidance_scale=3.
The reply text goes to stdout; the media and summary.json (what was produced) go to --output-dir.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from nextgpt.utils.cli import run_reporting_errors
from nextgpt.utils.logging import setup_logging

logger = logging.getLogger("nextgpt.predict")

SUMMARY_FILE = "summary.json"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint-dir", type=Path, required=True, help="stage-3 checkpoint or merged folder")
    source = parser.add_argument_group("request (a prompt, optionally after a conversation, or a batch)")
    source.add_argument("--prompt", help="the user's message")
    for modality in ("image", "video", "audio"):
        source.add_argument(f"--{modality}", type=Path, action="append", default=[], help=f"input {modality} file")
    source.add_argument("--conversation", type=Path, help="JSON conversation (earlier turns, or all of it)")
    source.add_argument("--batch", type=Path, help="JSONL file: one request per line")
    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", type=Path, default=Path("outputs"), help="where media and summary.json go")
    out.add_argument("--fps", type=int, default=8, help="frame rate of written videos")
    out.add_argument("--no-stream", action="store_true", help="print the reply once it is complete")
    text = parser.add_argument_group("text generation (default: the checkpoint's generation config)")
    text.add_argument("--temperature", type=float, help="0 = greedy (default 0.2)")
    text.add_argument("--top-p", type=float, help="nucleus sampling mass (default 1.0)")
    text.add_argument("--max-new-tokens", type=int, help="reply length limit (default 512)")
    text.add_argument("--seed", type=int, help="seeds text sampling and the decoders' initial noise (default 0)")
    text.add_argument(
        "--fast-decode",
        action="store_true",
        default=None,
        help="static KV cache + compiled decode step, same tokens (same as generation.fast_decode=true)",
    )
    media = parser.add_argument_group("media generation (default: the checkpoint's model.decoders)")
    media.add_argument("--guidance-scale", type=float, help="every decoder (default 7.5; audio 2.5)")
    media.add_argument("--num-inference-steps", type=int, help="every decoder (default 50)")
    media.add_argument("--height", type=int, help="image and video pixels (video default 320)")
    media.add_argument("--width", type=int, help="image and video pixels (video default 576)")
    media.add_argument("--num-frames", type=int, help="video frames (default 16)")
    media.add_argument("--audio-seconds", type=float, help="audio length (default 5)")
    run = parser.add_argument_group("runtime")
    run.add_argument("--device", default=None, help="cuda, cuda:1, cpu, ... (default: cuda when available)")
    run.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="weights dtype (default: config)")
    run.add_argument("--low-memory", action="store_true", help="load each decoder when needed, offload it after")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of the checkpoint's config")
    return parser


def _collect_requests(args: argparse.Namespace) -> list:
    """The requests named on the command line, with every input file checked (before the model loads)."""
    from nextgpt.constants import MODALITIES, Modality
    from nextgpt.inference.media_io import check_input_file
    from nextgpt.inference.requests import (
        ChatRequest,
        Message,
        check_conversation,
        read_conversation_file,
        read_requests_jsonl,
    )

    files = {Modality(m): getattr(args, m) for m in ("image", "video", "audio") if getattr(args, m)}
    if args.batch is not None:
        if args.prompt is not None or args.conversation is not None or files:
            raise ValueError("--batch takes its requests from the file; drop --prompt, --conversation and media flags")
        requests = read_requests_jsonl(args.batch)
    else:
        if args.prompt is None and files:
            raise ValueError("--image/--video/--audio belong to a --prompt; add --prompt or put them in the JSON")
        if args.prompt is None and args.conversation is None:
            raise ValueError("nothing to answer; pass --prompt (with optional media files), --conversation or --batch")
        messages = read_conversation_file(args.conversation) if args.conversation is not None else []
        if args.prompt is not None:
            messages.append(Message("user", args.prompt, files))
        check_conversation(messages)
        requests = [ChatRequest("reply", messages)]
    for request in requests:
        for message in request.messages:
            if message.role == "user":
                for modality in MODALITIES:
                    for path in message.media.get(modality, ()):
                        check_input_file(path, modality)
    return requests


def _decoder_options(args: argparse.Namespace) -> dict:
    from nextgpt.constants import MODALITIES
    from nextgpt.inference.pipeline import DecoderOptions

    option = DecoderOptions(
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        height=args.height,
        width=args.width,
        num_frames=args.num_frames,
        audio_seconds=args.audio_seconds,
    )
    for modality in MODALITIES:
        option.check(modality)
    return {modality: option for modality in MODALITIES}


def _input_records(messages: list) -> list[dict[str, str]]:
    return [
        {"modality": modality.value, "path": str(path)}
        for message in messages
        if message.role == "user"
        for modality, paths in message.media.items()
        for path in paths
    ]


def run(args: argparse.Namespace) -> Path:
    """Answer every request and write the media plus summary.json; returns the summary's path."""
    import torch
    from transformers import TextStreamer

    from nextgpt.inference.pipeline import NextGPTPipeline

    requests = _collect_requests(args)
    options = _decoder_options(args)
    if args.fps < 1:
        raise ValueError(f"--fps must be >= 1, got {args.fps}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipeline = NextGPTPipeline.from_pretrained(
        args.checkpoint_dir, device=device, dtype=args.dtype, low_memory=args.low_memory, overrides=args.overrides
    )
    generation = pipeline.generation_config(
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        fast_decode=args.fast_decode,
    )
    results = []
    for request in requests:
        logger.info("request %s: %s", request.id, request.messages[-1].text)
        streamer = None
        if not args.no_stream:
            streamer = TextStreamer(pipeline.model.tokenizer, skip_prompt=True, skip_special_tokens=True)
        reply = pipeline.reply(
            request.messages, args.output_dir, request.id, generation, options, streamer=streamer, fps=args.fps
        )
        if args.no_stream:
            print(reply.message.text, flush=True)
        results.append(
            {
                "id": request.id,
                "prompt": request.messages[-1].text,
                "inputs": _input_records(request.messages),
                "text": reply.message.text,
                "outputs": [item.to_json() for item in reply.saved],
                "problems": reply.result.problems,
            }
        )
    summary_path = args.output_dir / SUMMARY_FILE
    args.output_dir.mkdir(parents=True, exist_ok=True)
    summary = {"checkpoint": str(args.checkpoint_dir), "results": results}
    summary_path.write_text(json.dumps(summary, indent=2))
    logger.info("wrote %d file(s) and %s", sum(len(r["outputs"]) for r in results), summary_path)
    return summary_path


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    setup_logging()
    logger.info("arguments: %s", vars(args))

    def body() -> None:
        run(args)

    return run_reporting_errors(body)


if __name__ == "__main__":
    sys.exit(main())
