"""A small constrained LightningModule and its data, shared by the Lightning tests and the
``strategy="ddp"`` script they launch (importable without pytest)."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import eclearn as ecl
from eclearn.integrations.lightning import ConstrainedModule

N, GROUPS = 64, 3


def data() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(N, 3, generator=gen, dtype=torch.float64)
    # uneven groups, so the two ranks' shards hold different counts of each
    g = torch.tensor([0] * 34 + [1] * 20 + [2] * 10)[torch.randperm(N, generator=gen)]
    w = torch.tensor([0.5, -1.0, 0.25], dtype=torch.float64)
    y = x @ w + 0.1 * torch.randn(N, generator=gen, dtype=torch.float64)
    return {"x": x, "y": y, "group": g, "index": torch.arange(N)}


class Rows(Dataset):
    """One dict per row; the default collate stacks them into a batch dict."""

    def __init__(self) -> None:
        self.columns = data()

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.columns.items()}


def loader(batch_size: int, shuffle: bool = False) -> DataLoader:
    return DataLoader(Rows(), batch_size=batch_size, shuffle=shuffle)


def global_loader(batch_size: int) -> DataLoader:
    """One process's view of what Lightning's DDP sampler serves W processes: the
    ``DistributedSampler`` permutation (seed 0, reshuffled per epoch) in global batches."""
    rows = Rows()
    sampler = DistributedSampler(rows, num_replicas=1, rank=0, shuffle=True, seed=0)
    return DataLoader(rows, batch_size=batch_size, sampler=sampler)


def evaluate(model, batch):
    out = model(batch["x"]).squeeze(-1)
    onehot = nn.functional.one_hot(batch["group"], GROUPS).to(out.dtype)
    return {
        "objective": ((out - batch["y"]) ** 2).mean(),
        "mean": out.mean().reshape(1),
        "energy": (out**2).mean().reshape(1),
        "rates": ecl.Ratio(torch.sigmoid(out) @ onehot, onehot.sum(0)),
        "fit": out - batch["y"],
    }


def problem() -> ecl.Problem:
    return ecl.Problem(
        evaluate,
        [
            ecl.Equality("mean", rhs=0.2),
            ecl.Inequality("energy", bound=0.3),
            ecl.Equality("rates", size=GROUPS, rhs=0.5),
            ecl.Inequality("fit", pointwise=True, num_samples=N),
        ],
    )


class Regression(ConstrainedModule, L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.net = nn.Linear(3, 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def configure_problem(self) -> ecl.Problem:
        return problem()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.5)

    def configure_solver(self):
        return {"dual_optimizer": ecl.dual.Adam(lr=0.02)}


def trainer(steps: int, root: str, **options) -> L.Trainer:
    defaults = dict(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        default_root_dir=root,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**{**defaults, **options})


def snapshot(module: Regression) -> dict[str, torch.Tensor]:
    out = {f"param/{k}": v.detach().clone() for k, v in module.net.state_dict().items()}
    out.update({f"mult/{k}": v for k, v in module.solver.multipliers.items()})
    return out
