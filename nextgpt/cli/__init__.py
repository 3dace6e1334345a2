"""Command lines of the project: each module has `main(argv) -> int`, installed as a console command.

    nextgpt-train --config configs/stage_1.yaml train.lr=1e-4      # nextgpt.cli.train
    nextgpt-predict --checkpoint-dir runs/stage_3/final --prompt "Draw a cat."
    nextgpt-build-tiny --out checkpoints/tiny                     # tiny checkpoints in the real formats

The repository's top-level scripts (train.py, predict.py, ...) call the same `main`s.
"""
