"""Command lines of the project: each module has `main(argv) -> int`, installed as a console command.

    nextgpt-train --config configs/stage_1.yaml train.lr=1e-4      # nextgpt.cli.train
    nextgpt-predict --checkpoint-dir runs/stage_3/final --prompt "Draw a cat."
    nextgpt-quickstart --workdir /tmp/nextgpt-tiny                # proves an install in minutes on a CPU

The repository's top-level scripts (train.py, predict.py, ...) call the same `main`s.
"""
