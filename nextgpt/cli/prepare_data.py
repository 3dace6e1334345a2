"""Turn official raw dataset downloads into annotation files, a catalog fragment and a report (no downloads).

    python prepare_data.py --dataset cc3m --root /data/cc3m --out data/prepared
    python prepare_data.py --dataset audiocap --root /data/audiocap --split generation --limit 100
    python prepare_data.py --dataset all --root /data/nextgpt_raw --out data/prepared
    python preprocess_embeddings.py --config configs/base.yaml --catalog data/prepared/datasets.yaml --datasets cc3m_dec
    python train.py --config configs/stage_1.yaml data.catalog_path=data/prepared/datasets.yaml

Raw layouts, one folder per dataset (`--root`); with `--dataset all`, `--root` holds these folders by name (or is the
official repository's data/ folder: T_X_pair_data/<name>, IT_data/T+X-T_data/<name>, IT_data/T-T+X_data,
IT_data/MosIT_data):
    cc3m/       cc3m.json [{caption, id, image_name}] + images/   (or img2dataset "files" output: *.jpg + *.txt)
    webvid/     webvid.json [{caption, id, video_name}] + videos/
    audiocap/   audiocap.json [{audio_id, audio_name, caption}] + audios/   (or train.csv, val.csv, test.csv)
    llava/      llava_instruct_150k.json + COCO images in train2017/ (or train2014/, images/)
    alpaca/     alpaca_data.json
    videochat/  videochat_instruct_11k.json [{video, QA}] (or videochat.json) + videos/
    t2m/        {image,video,audio}_t2x.json (or {x}_instruction_tuning.json)
    mosit/      mosit.json (or mosit_instruction_tuning.json), optional images/ videos/ audios/

Writes `<out>/<dataset>/*.json` (the NExT-GPT formats the training parser reads; every record is checked with it),
`<out>/datasets.yaml` (catalog entries named as in configs/datasets.yaml: cc3m_enc, cc3m_dec, ..., mosit_instruction)
and `<out>/report.json` (records found, written and skipped, with reasons and example ids). Generation sets name their
caption embeddings `<media name>.npy` under `<out>/embed/<dataset>/`, the names preprocess_embeddings.py writes.
Rerunning gives the same files; datasets converted one by one share one catalog and one report.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nextgpt.utils.cli import run_reporting_errors
from nextgpt.utils.logging import setup_logging

logger = logging.getLogger("nextgpt.prepare_data")


def build_parser() -> argparse.ArgumentParser:
    from nextgpt.data.prepare.options import DATASETS, SPLITS
    from nextgpt.data.prepare.prompts import DEFAULT_SEED

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help=f"one of {', '.join(DATASETS)}, or all")
    parser.add_argument("--root", type=Path, required=True, help="the raw download folder (with all: their parent)")
    parser.add_argument("--out", type=Path, default=Path("data/prepared"), help="output folder")
    parser.add_argument("--split", default=",".join(SPLITS), help="pair datasets: comprehension,generation or one")
    parser.add_argument("--limit", type=int, default=None, help="convert only the first N records of each file")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the prompt-template draws")
    parser.add_argument("--annotation", type=Path, default=None, help="raw annotation file instead of the default")
    parser.add_argument("--media-dir", type=Path, default=None, help="media folder instead of the default")
    parser.add_argument("--embed-dir", type=Path, default=None, help="caption-embedding folder (default <out>/embed)")
    parser.add_argument(
        "--llava-first-turn-only", action="store_true", help="LLaVA: keep the image in the first user turn only"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    logger.info("arguments: %s", vars(args))

    def body() -> None:
        from nextgpt.data.prepare import PrepareOptions, format_report, prepare

        options = PrepareOptions(
            dataset=args.dataset,
            root=args.root,
            out=args.out,
            splits=tuple(s.strip() for s in args.split.split(",") if s.strip()),
            limit=args.limit,
            seed=args.seed,
            annotation=args.annotation,
            media_dir=args.media_dir,
            embed_dir=args.embed_dir,
            llava_image_every_turn=not args.llava_first_turn_only,
            progress=not args.no_progress,
        )
        for report in prepare(options):
            print(format_report(report))
        print(f"catalog: {options.out / 'datasets.yaml'}; report: {options.out / 'report.json'}")

    return run_reporting_errors(body)


if __name__ == "__main__":
    sys.exit(main())
