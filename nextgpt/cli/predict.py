"""Any-to-any inference from the command line: prompt + media files in, text (streamed) + PNG / MP4 / WAV files out.

python predict.py --checkpoint-dir runs/stage_3/final --prompt "Please generate an image of a red fox."
python predict.py --checkpoint-dir checkpoints/nextgpt-7b-merged --image cat.jpg --prompt "Turn this into a video."
python predict.py --checkpoint-dir runs/stage_3/final --conversation chat.json --prompt "Now the sound of it."
python predict.py --checkpoint-dir runs/stage_3/final --batch requests.jsonl --low-memory --dtype float16
python predict.py --checkpoint-dir runs/stage_3/final --batch requests.jsonl --batch-size 32   # text of 32 at once
python predict.py --checkpoint-dir runs/stage_3/final --prompt "Draw a cat." --no-compile-decode   # one reply: skip the compile
python predict.py --checkpoint-dir runs/tiny/tools/final --tools data/tiny/tools/tools.json \
    --image shapes.png --prompt "How many shapes are there?"                    # tool use: choose, run, show the tool

Every input is checked before any model loads (files exist and decode, JSON shape, ids, option ranges, output
folder, device, checkpoint), and a problem ends the run with one `error:` line and exit code 2.
Files given without a placeholder in the prompt are put in front of it, one `<image>`/`<video>`/`<audio>` per file.
Decoders load only when a reply asks for their modality.

Outputs: each run writes into its own new folder, --output-dir/<run name>/ (the start time, YYYYmmdd-HHMMSS, unless
--run-name is given), as <request id>-<modality>-<k>.png|mp4|wav plus summary.json, which is rewritten after every
request. Nothing earlier is overwritten. The reply text goes to stdout; each written path is logged on stderr.
A --batch file is answered in groups of --batch-size: a group's text is decoded as one batch (several times the
requests/s of one at a time; the same greedy or seeded tokens), then each reply is rendered and written in turn.

--tools FILE (a tool library, `nextgpt.tools.library`): the reply is read as a tool choice (`{'api_name': <id>}`);
the chosen tool runs on the request's text and media (a named function, one of the decoders, or a local pipeline
folder), its output is printed as a `tool:` line and recorded under "tool" in summary.json. A tool id outside the
library is reported and never run.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nextgpt.cli.inference_args import (
    CHECKPOINT_DEFAULT,
    OneLineArgumentParser,
    add_checkpoint_flags,
    check_flag_ranges,
    parse_or_exit_code,
)
from nextgpt.utils.cli import USER_ERRORS, describe_os_error, run_reporting_errors
from nextgpt.utils.logging import setup_logging

logger = logging.getLogger("nextgpt.predict")

SUMMARY_FILE = "summary.json"
TEXT_FLAGS = ("temperature", "top_p", "max_new_tokens", "seed")
MEDIA_FLAGS = ("guidance_scale", "num_inference_steps", "height", "width", "num_frames", "audio_seconds")
DECODER_FIELDS = {
    "image": ("num_inference_steps", "guidance_scale", "height", "width"),
    "video": ("num_inference_steps", "guidance_scale", "height", "width", "num_frames"),
    "audio": ("num_inference_steps", "guidance_scale", "audio_seconds"),
}


class _RemovedFlag(argparse.Action):
    """`--fast-decode` (removed): fail naming its successor instead of argparse's bare "unrecognized arguments"."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        parser.error(
            "--fast-decode was removed: replies always decode with the static KV cache it switched on; "
            "--compile-decode / --no-compile-decode choose whether the decode step is compiled"
        )


def _build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_flags(parser)
    source = parser.add_argument_group("request (a prompt, optionally after a conversation, or a batch)")
    source.add_argument("--prompt", help="the user's message")
    for modality in ("image", "video", "audio"):
        source.add_argument(
            f"--{modality}", type=Path, action="append", default=[], help=f"input {modality} file (repeatable)"
        )
    source.add_argument("--conversation", type=Path, help="JSON conversation (earlier turns, or all of it)")
    source.add_argument("--batch", type=Path, help="JSONL file: one request per line")
    source.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="--batch requests whose text is decoded together (default: 8; replies print when their group is done); "
        "1 answers one request at a time, streaming each reply",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", type=Path, default=Path("outputs"), help="each run writes a new sub-folder here")
    out.add_argument("--run-name", help="name of this run's sub-folder (default: the start time, YYYYmmdd-HHMMSS)")
    out.add_argument("--fps", type=int, default=8, help="frame rate of written videos (default: 8)")
    out.add_argument("--no-stream", action="store_true", help="print the reply once it is complete")
    text = parser.add_argument_group(f"text generation ({CHECKPOINT_DEFAULT}: generation.*)")
    text.add_argument("--temperature", type=float, help="0 = greedy")
    text.add_argument("--top-p", type=float, help="nucleus sampling mass, in (0, 1]")
    text.add_argument("--max-new-tokens", type=int, help="reply length limit in tokens")
    text.add_argument("--seed", type=int, help="seeds text sampling and the decoders' initial noise")
    text.add_argument(
        "--compile-decode",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile the text decode step: a first reply of about 100-130 s on a 7B model, then about 7x faster "
        "decoding, the same tokens up to bf16 rounding (generation.compile_decode; default: on CUDA only)",
    )
    text.add_argument("--fast-decode", action=_RemovedFlag, nargs=0, help=argparse.SUPPRESS)
    media = parser.add_argument_group(f"media generation ({CHECKPOINT_DEFAULT}: model.decoders.<modality>.*)")
    media.add_argument("--guidance-scale", type=float, help="every decoder; <= 1 disables guidance")
    media.add_argument("--num-inference-steps", type=int, help="denoising steps of every decoder")
    media.add_argument("--height", type=int, help="image and video pixels, a multiple of 8")
    media.add_argument("--width", type=int, help="image and video pixels, a multiple of 8")
    media.add_argument("--num-frames", type=int, help="video frames")
    media.add_argument("--audio-seconds", type=float, help="audio length in seconds")
    parser.add_argument(
        "--tools", type=Path, help="tool library JSON: run the tool the reply chooses and show its output"
    )
    parser.add_argument(
        "--progress",
        choices=["auto", "on", "off"],
        default="auto",
        help="progress bars for diffusion steps and --batch requests (auto: only on a terminal)",
    )
    return parser


def _collect_requests(args: argparse.Namespace) -> list:
    """The requests named on the command line, with their JSON shape, ids and placeholders checked."""
    from nextgpt.constants import Modality
    from nextgpt.inference.requests import (
        ChatRequest,
        Message,
        check_request_messages,
        read_conversation_file,
        read_requests_jsonl,
    )

    files = {Modality(m): getattr(args, m) for m in ("image", "video", "audio") if getattr(args, m)}
    if args.batch is not None:
        if args.prompt is not None or args.conversation is not None or files:
            raise ValueError("--batch takes its requests from the file; drop --prompt, --conversation and media flags")
        return read_requests_jsonl(args.batch)
    if args.prompt is None and files:
        raise ValueError('--image/--video/--audio belong to a --prompt; add --prompt "..." or put them in the JSON')
    if args.prompt is None and args.conversation is None:
        raise ValueError("nothing to answer; pass --prompt (with optional media files), --conversation or --batch")
    messages = read_conversation_file(args.conversation) if args.conversation is not None else []
    if args.prompt is not None:
        messages.append(Message("user", args.prompt, files))
    where = "--prompt" if args.conversation is None else f"{args.conversation}" + (" + --prompt" * bool(args.prompt))
    check_request_messages(messages, where)
    return [ChatRequest("reply", messages)]


def _decoder_options(args: argparse.Namespace) -> dict:
    from nextgpt.constants import MODALITIES
    from nextgpt.inference.pipeline import DecoderOptions

    option = DecoderOptions(**{name: getattr(args, name) for name in MEDIA_FLAGS})
    return {modality: option for modality in MODALITIES}


def _settings(cfg: Any, args: argparse.Namespace, options: dict) -> tuple[Any, dict[str, Any]]:
    """The generation config and each decoder's effective config (checkpoint values, then the flags), validated."""
    generation = dataclasses.replace(
        cfg.generation,
        **{n: getattr(args, n) for n in (*TEXT_FLAGS, "compile_decode") if getattr(args, n) is not None},
    )
    decoders = {
        m.value: dataclasses.replace(getattr(cfg.model.decoders, m.value), **option.to_kwargs(m))
        for m, option in options.items()
        if getattr(cfg.model.decoders, m.value).pipeline_path is not None
    }
    return generation, decoders


def _settings_record(generation: Any, decoders: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The values this run uses, for the log and summary.json."""
    record = {"text": {n: getattr(generation, n) for n in TEXT_FLAGS}}
    for name, cfg in decoders.items():
        record[f"{name} decoder"] = {f: getattr(cfg, f) for f in DECODER_FIELDS[name]}
    return record


def _describe_settings(record: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    """One log line of the values this run uses; `*` marks those a flag set, the rest are the checkpoint's."""

    def show(name: str, value: Any) -> str:
        return f"{name}={value}{'*' if getattr(args, name, None) is not None else ''}"

    parts = [f"{part}: " + " ".join(show(n, v) for n, v in values.items()) for part, values in record.items()]
    return "; ".join(parts) + " (* = from a flag, else the checkpoint's config)"


def _run_tool(registry: Any, request: Any, reply: Any, run_dir: Path) -> dict[str, Any]:
    """Run the tool the reply chooses on the request's text and media; print and log what it gave."""
    from nextgpt.inference.input_checks import request_media
    from nextgpt.tools.answers import parse_tool_answer

    answer = parse_tool_answer(reply.message.text)
    outcome = registry.run(
        answer.first, request.messages[-1].text, request_media(request.messages[-1:]), run_dir, request.id
    )
    shown = outcome.text if outcome.text is not None else ", ".join(str(p) for p in outcome.files) or outcome.message
    print(f"tool: {outcome.tool or '-'} [{outcome.status}] {shown}", flush=True)
    logger.info("tool %s: %s", outcome.tool, outcome.message)
    return outcome.to_json()


def _result_record(request: Any, reply: Any) -> dict[str, Any]:
    from nextgpt.inference.input_checks import request_media

    return {
        "id": request.id,
        "prompt": request.messages[-1].text,
        "inputs": [{"modality": m.value, "path": str(p)} for m, p in request_media(request.messages)],
        "text": reply.message.text,
        "outputs": [item.to_json() for item in reply.saved],
        "problems": reply.result.problems,
    }


def _failed(request_id: str, err: Exception, summary: Any) -> ValueError:
    """One line for a request that failed mid-run, saying what was kept."""
    if isinstance(err, USER_ERRORS):
        reason = str(err)
    else:  # an OSError while writing (full disk, folder removed, ...)
        reason = describe_os_error(err) or f"could not write the outputs ({err})"
    kept = f"the {summary.num_done} finished request(s) are listed in {summary.path}"
    return ValueError(f"request {request_id} failed: {reason}; {kept}")


def _answer_all(
    pipeline: Any,
    requests: list,
    run_dir: Path,
    summary: Any,
    settings: dict,
    args: argparse.Namespace,
    registry: Any = None,
):
    """Answer every request (in groups of --batch-size), run the tool each reply chooses (with a registry), log each
    written file and rewrite summary.json after each request."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    batch = len(requests) > 1
    disable = {"auto": None, "on": False, "off": True}[args.progress] if batch else True
    size = args.batch_size if batch else 1
    with logging_redirect_tqdm(), tqdm(total=len(requests), desc="requests", unit="request", disable=disable) as bar:
        for first in range(0, len(requests), size):
            group = requests[first : first + size]
            for request in group:
                logger.info("request %s: %.120s", request.id, request.messages[-1].text)
            replies = _replies(pipeline, group, run_dir, settings, args, bar, labelled=batch)
            for request in group:
                try:
                    reply = next(replies)
                    if args.no_stream or len(group) > 1:
                        bar.clear()
                        print(f"[{request.id}] " * batch + reply.message.text, flush=True)
                    record = _result_record(request, reply)
                    if registry is not None:
                        record["tool"] = _run_tool(registry, request, reply, run_dir)
                    summary.add(record)
                except (*USER_ERRORS, OSError) as err:
                    raise _failed(request.id, err, summary) from err
                for item in reply.saved:
                    logger.info("wrote %s", item.path)
                bar.update(1)


def _replies(
    pipeline: Any, group: list, run_dir: Path, settings: dict, args: argparse.Namespace, bar: Any, labelled: bool
) -> Iterator:
    """Each request's written reply, in order: one request streams its text as it is decoded (after its `[id]` when
    `labelled`); several are decoded as one batch (`NextGPTPipeline.iter_batch`), each rendered and written in turn."""
    from transformers import TextStreamer

    if len(group) == 1:
        (request,) = group
        streamer = None
        if not args.no_stream:
            streamer = TextStreamer(pipeline.model.tokenizer, skip_prompt=True, skip_special_tokens=True)
            bar.clear()
            if labelled:
                print(f"[{request.id}] ", end="", flush=True)
        yield pipeline.reply(request.messages, run_dir, request.id, streamer=streamer, **settings)
        return
    results = pipeline.iter_batch([r.messages for r in group], settings["generation"], settings["decoder_options"])
    for request, result in zip(group, results, strict=True):
        yield pipeline.save(result, run_dir, request.id, settings["fps"])


def run(args: argparse.Namespace) -> Path:
    """Check every input, load the checkpoint, answer every request; returns the run's summary.json."""
    from nextgpt.inference.input_checks import check_request_media
    from nextgpt.inference.outputs import RunSummary, create_run_dir, prepare_output_dir, remove_if_empty
    from nextgpt.inference.pipeline import NextGPTPipeline, dtype_overrides
    from nextgpt.inference.preflight import inspect_checkpoint, resolve_device

    # 1. What the user typed: flags, requests and their files, the output folder, the device (no model yet).
    check_flag_ranges(args, (*TEXT_FLAGS, *MEDIA_FLAGS, "fps", "batch_size"))
    requests = _collect_requests(args)
    check_request_media(requests)
    library = None
    if args.tools is not None:
        from nextgpt.tools.library import load_tool_library

        library = load_tool_library(args.tools)
    output_dir = prepare_output_dir(args.output_dir)
    device = resolve_device(args.device)
    # 2. The checkpoint, without reading weights: config + overrides, components, architecture, file headers.
    overrides = [*dtype_overrides(args.dtype), *args.overrides]
    cfg = inspect_checkpoint(args.checkpoint_dir, overrides)
    options = _decoder_options(args)
    generation, decoders = _settings(cfg, args, options)
    settings_record = _settings_record(generation, decoders)
    logger.info("settings: %s", _describe_settings(settings_record, args))
    # 3. Load (the manifest is verified first); decoders load when a reply needs them.
    run_dir = create_run_dir(output_dir, args.run_name)
    try:
        show_progress = {"auto": None, "on": True, "off": False}[args.progress]
        pipeline = NextGPTPipeline.from_pretrained(
            args.checkpoint_dir, device, args.dtype, args.low_memory, args.overrides, show_progress=show_progress
        )
        for request in requests:  # over-long conversations fail here, before the first reply
            pipeline.fit_to_context(request.messages, generation)
        # 4. Answer; summary.json exists from now on and is rewritten after every request.
        logger.info("writing to %s", run_dir)
        header = {
            "checkpoint": str(Path(args.checkpoint_dir).absolute()),
            "run_dir": str(run_dir),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "settings": settings_record,
        }
        summary = RunSummary(run_dir / SUMMARY_FILE, header, len(requests))
        settings = {"generation": generation, "decoder_options": options, "fps": args.fps}
        registry = None
        if library is not None:
            from nextgpt.tools.registry import ToolRegistry

            registry = ToolRegistry(library, decoders=pipeline.decoders, seed=generation.seed)
        _answer_all(pipeline, requests, run_dir, summary, settings, args, registry)
    finally:
        remove_if_empty(run_dir)
    num_files = sum(len(r["outputs"]) for r in summary.data["results"])
    logger.info("done: %d request(s), %d file(s) in %s; summary: %s", len(requests), num_files, run_dir, summary.path)
    return summary.path


def main(argv: list[str] | None = None) -> int:
    args = parse_or_exit_code(_build_parser(), argv)
    if isinstance(args, int):
        return args
    setup_logging()
    logger.info("arguments: %s", vars(args))

    def body() -> None:
        run(args)

    return run_reporting_errors(body)


if __name__ == "__main__":
    sys.exit(main())
