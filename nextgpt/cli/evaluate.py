"""Evaluate checkpoints: benchmark tasks under frozen protocols (--tasks, writes an eval card), or the held-out
metrics of the tiny world's three stages (a JSON report with chance levels and targets).

python evaluate.py --tasks all --checkpoint-dir runs/stage_3/final --output-dir runs/eval
python evaluate.py --tasks coco_t2i --checkpoint-dir runs/stage_3/final coco_t2i.media_dir=/data/coco/images
torchrun --nproc-per-node 8 evaluate.py --tasks coco_t2i msrvtt_t2v --checkpoint-dir runs/stage_3/final --device cuda
python evaluate.py --tasks all --protocol-dir configs/eval/tiny --checkpoint-dir runs/tiny/stage_3/final \
    --output-dir runs/tiny/eval
python evaluate.py --checkpoint-dir runs/tiny/stage_1/final runs/tiny/stage_2/final runs/tiny/stage_3/final
python evaluate.py --checkpoint-dir runs/tiny/stage_2/final --baseline --max-items 16 --output /tmp/eval.json
python evaluate.py --checkpoint-dir runs/tiny/merged --stage 3 --metrics switching
python evaluate.py --checkpoint-dir runs/tiny/tools/final --baseline --output runs/tiny/tools/eval.json

With --tasks, the `key=value` arguments change protocol fields (`coco_t2i.annotation_path=...`, or `num_samples=8`
for every task) and the checkpoint config takes `--config-override`; a killed run continues from its samples.

Each folder gets its stage's metrics (stage 1: attribute accuracy of captions; stage 2: cosine and caption retrieval
of the projected signal tokens; stage 3: modality switching and text replies, plus the other two). --baseline adds
the same architecture with untrained project weights. --require-targets exits 1 when an acceptance target is missed.
A tool-use run (its config names `data.tool_library_path`, or --tools FILE) is scored on tool use (accuracy,
hallucination and format accuracy on the held-out `--tool-datasets`); its table is also written as Markdown next to
the JSON report (`<output>.md`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nextgpt.config import ConfigError
from nextgpt.eval.protocol import TASK_NAMES
from nextgpt.utils.logging import setup_logging

logger = logging.getLogger("nextgpt.scripts.evaluate")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint-dir", type=Path, nargs="+", required=True, help="checkpoint or merged folders")
    parser.add_argument("--stage", type=int, nargs="+", help="stage of each folder (default: its config's)")
    parser.add_argument("--catalog", type=Path, help="catalog with the held-out entries (default: the config's)")
    parser.add_argument(
        "--metrics", nargs="+", choices=["captioning", "alignment", "switching", "tools"], help="default: the stage's"
    )
    parser.add_argument("--tools", type=Path, help="tool library JSON (default: the config's data.tool_library_path)")
    parser.add_argument(
        "--tool-datasets", nargs="+", help="held-out tool catalog names (default: tool_{text,image,video,audio}_eval)"
    )
    parser.add_argument("--max-items", type=int, default=None, help="records per held-out dataset (default: all)")
    parser.add_argument("--baseline", action="store_true", help="also evaluate untrained project weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=Path("runs/tiny/eval.json"), help="JSON report path")
    parser.add_argument("--require-targets", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--tasks", nargs="+", help="benchmark tasks (or all): " + ", ".join(TASK_NAMES))
    parser.add_argument(
        "--protocol-dir", type=Path, help="protocol YAMLs (default: configs/eval; tiny world: configs/eval/tiny)"
    )
    parser.add_argument("--output-dir", type=Path, default=Path("runs/eval"), help="samples and eval card (--tasks)")
    parser.add_argument("--rank", type=int, help="this process's rank (default: $RANK or 0)")
    parser.add_argument("--world-size", type=int, help="number of ranks (default: $WORLD_SIZE or 1)")
    parser.add_argument("--config-override", action="append", default=[], help="checkpoint config key=value (--tasks)")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="key.sub=value overrides of the checkpoints' configs (with --tasks: of the protocols)",
    )
    return parser


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _summary_lines(report: dict) -> list[str]:
    """One line per headline metric (with chance where it has one), then the targets."""
    lines = []
    for run in report["runs"]:
        for label, metrics in (("trained", run["metrics"]), ("untrained", run.get("untrained"))):
            if metrics is None:
                continue
            head = f"stage {run['stage']} {label:9s}"
            if "captioning" in metrics:
                m = metrics["captioning"]
                lines.append(f"{head} attribute accuracy {_fmt(m['accuracy'])} (chance {_fmt(m['chance'])})")
            if "alignment" in metrics:
                m = metrics["alignment"]
                lines.append(
                    f"{head} retrieval accuracy {_fmt(m['retrieval_accuracy'])} (chance {_fmt(m['chance'])}), "
                    f"mean cosine {_fmt(m['mean_cosine'])}"
                )
            if "tools" in metrics:
                m = metrics["tools"]["overall"]
                lines.append(
                    f"{head} tool accuracy {_fmt(m.get('accuracy'))} (chance {_fmt(m.get('chance'))}), "
                    f"hallucination {_fmt(m.get('hallucination_rate'))}, format {_fmt(m.get('format_accuracy'))}"
                )
            if "switching" in metrics:
                m = metrics["switching"]
                lines.append(
                    f"{head} modality-switch accuracy {_fmt(m['modality_switch_accuracy'])}, "
                    f"text-reply accuracy {_fmt(m['text_reply_accuracy'])}"
                )
    for target in report["targets"]:
        status = "met" if target["passed"] else "MISSED"
        lines.append(f"target {target['name']}: {_fmt(target['value'])} {target['target']} -> {status}")
    return lines


def _run_tasks(args: argparse.Namespace) -> int:
    """Benchmark mode: evaluate the tasks on one checkpoint and print the card's table (rank 0)."""
    from nextgpt.eval.card import card_markdown
    from nextgpt.eval.suite import evaluate_suite, rank_from_env

    if len(args.checkpoint_dir) != 1:
        print(
            f"error: --tasks evaluates one checkpoint, got {len(args.checkpoint_dir)}; run once per checkpoint",
            file=sys.stderr,
        )
        return 2
    env_rank, env_world = rank_from_env()
    rank = env_rank if args.rank is None else args.rank
    world_size = env_world if args.world_size is None else args.world_size
    try:
        card = evaluate_suite(
            args.tasks,
            args.checkpoint_dir[0],
            args.output_dir,
            args.protocol_dir,
            args.overrides,
            rank,
            world_size,
            args.device,
            args.config_override,
        )
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if card is None:
        logger.info(
            "rank %d of %d: samples written to %s; rank 0 scores once all ranks finish",
            rank,
            world_size,
            args.output_dir,
        )
        return 0
    print(card_markdown(card))
    print(f"eval card: {args.output_dir / 'eval_card.json'}, {args.output_dir / 'eval_card.md'}")
    return 0


def _write_tool_tables(report: dict, output: Path) -> None:
    """The tool-use runs' Markdown table (trained and untrained rows) next to the JSON report."""
    from nextgpt.eval.tools import tool_report_markdown

    tables = []
    for run in report["runs"]:
        if "tools" not in run["metrics"]:
            continue
        runs = {"trained": run["metrics"]["tools"]}
        if run.get("untrained"):
            runs["untrained"] = run["untrained"]["tools"]
        tables.append(tool_report_markdown(runs, title=f"Tool use: {run['checkpoint']}"))
    if tables:
        output.with_suffix(".md").write_text("\n".join(tables))
        print(f"tool table: {output.with_suffix('.md')}")


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    setup_logging()
    logger.info("arguments: %s", vars(args))
    if args.tasks:
        return _run_tasks(args)
    try:
        from nextgpt.eval.heldout import EvalDatasets
        from nextgpt.eval.report import evaluate_checkpoints, write_report

        overrides = list(args.overrides)
        if args.tools is not None:
            overrides.append(f"data.tool_library_path={args.tools.absolute()}")
        datasets = EvalDatasets(tools=tuple(args.tool_datasets)) if args.tool_datasets else None
        report = evaluate_checkpoints(
            args.checkpoint_dir,
            args.stage,
            catalog_path=args.catalog,
            metrics=args.metrics,
            max_items=args.max_items,
            baseline=args.baseline,
            device=args.device,
            overrides=overrides,
            datasets=datasets,
        )
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_report(report, args.output)
    _write_tool_tables(report, args.output)
    print("\n".join(_summary_lines(report)))
    print(f"report: {args.output}")
    missed = [t for t in report["targets"] if not t["passed"]]
    return 1 if args.require_targets and missed else 0


if __name__ == "__main__":
    sys.exit(main())
