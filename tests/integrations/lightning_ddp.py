"""Run by test_lightning.py: ``Trainer(strategy="ddp", devices=2)`` on CPU (gloo), as a
user's script would be; Lightning launches the second process itself. Rank 0 saves the
parameters and multipliers to ``sys.argv[1]``."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch

from tests.integrations import lightning_app as app


def main(out: str, steps: int, per_rank_batch: int) -> None:
    torch.set_num_threads(1)
    module = app.Regression()
    trainer = app.trainer(
        steps, os.path.dirname(out), strategy="ddp", devices=2, use_distributed_sampler=True
    )
    trainer.fit(module, app.loader(per_rank_batch))
    if trainer.is_global_zero:
        torch.save(app.snapshot(module), out)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
