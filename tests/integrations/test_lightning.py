"""PyTorch Lightning: ConstrainedModule under Trainer — exact resume from Lightning
checkpoints, the same steps as ``PrimalDual.fit``, logging, and ``strategy="ddp"`` with two
CPU processes equal to one process on the global batch."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip(
    "lightning", reason="PyTorch Lightning is not installed (pip install 'eclearn[lightning]')"
)

from tests.integrations import lightning_app as app

ROOT = Path(__file__).resolve().parents[2]
STEPS = 8  # two epochs of 4 batches


def fit(steps, tmp_path, module=None, ckpt_path=None, shuffle=True, data=None, **options):
    torch.manual_seed(0)
    module = module or app.Regression()
    trainer = app.trainer(steps, str(tmp_path), **options)
    data = data if data is not None else app.loader(16, shuffle=shuffle)
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return module, trainer


def test_checkpoint_resume_is_exact(tmp_path):
    """2N steps with a ModelCheckpoint at step N; resuming from it to 2N ≡ the
    uninterrupted run, bitwise (parameters, multipliers, dual state, history)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    saver = ModelCheckpoint(
        dirpath=str(tmp_path / "ckpt"), every_n_train_steps=STEPS, save_top_k=-1
    )
    whole, _ = fit(2 * STEPS, tmp_path / "whole", callbacks=[saver], enable_checkpointing=True)
    path = tmp_path / "ckpt" / f"epoch=1-step={STEPS}.ckpt"
    saved = torch.load(path, weights_only=False)
    assert saved["eclearn"]["counters"]["step"] == STEPS
    assert saved["eclearn"]["model"] is None  # Lightning's own state_dict holds the model
    torch.manual_seed(1234)  # the checkpoint's RNG state wins
    resumed, _ = fit(2 * STEPS, tmp_path / "resumed", ckpt_path=str(path))
    a, b = app.snapshot(whole), app.snapshot(resumed)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.solver.step == 2 * STEPS
    assert (whole.solver.history.to_numpy() == resumed.solver.history.to_numpy()).all()
    for key, state in whole.solver.dual_state.items():
        for name, value in state.items():
            assert torch.equal(value, resumed.solver.dual_state[key][name]), (key, name)


def test_same_steps_as_fit(tmp_path):
    """A Lightning epoch is fit's epoch: same parameters, multipliers and history."""
    module, _ = fit(STEPS, tmp_path, shuffle=False)
    reference = app.Regression()
    solver = app.ecl.PrimalDual(
        app.problem(),
        reference,
        torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.5),
        app.ecl.dual.Adam(lr=0.02),
    )
    solver.fit(list(app.loader(16)), max_steps=STEPS, warn=False)
    a, b = (
        app.snapshot(module),
        {
            **{f"param/{k}": v for k, v in reference.net.state_dict().items()},
            **{f"mult/{k}": v for k, v in solver.multipliers.items()},
        },
    )
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-12, msg=key)
    history = module.solver.history
    assert list(history["epoch"]) == [0] * 4 + [1] * 4
    torch.testing.assert_close(
        torch.from_numpy(history.to_numpy()[:, 2:]),
        torch.from_numpy(solver.history.to_numpy()[:, 2:]),
    )


def test_violations_and_multipliers_reach_the_logger(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(str(tmp_path), name="run")
    module, _ = fit(STEPS, tmp_path, logger=logger, log_every_n_steps=1)
    logger.finalize("success")
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    names = set(rows[0])
    for name in (
        "violation/mean",
        "violation/rates[2]",
        "multiplier/energy",
        "lagrangian",
        "excess/fit/max",
        "multiplier/fit/norm",
        "objective",
    ):
        assert name in names, name
    last = [r for r in rows if r["multiplier/energy"]][-1]
    assert float(last["multiplier/energy"]) == pytest.approx(
        float(module.solver.multipliers["energy"]), rel=1e-6
    )
    assert len([r for r in rows if r["violation/mean"]]) == STEPS


def test_refuses_what_lightning_owns(tmp_path):
    class Scheduled(app.Regression):
        def configure_solver(self):
            return {"autocast": torch.bfloat16}

    with pytest.raises(ValueError, match="precision"):
        fit(1, tmp_path, module=Scheduled())
    with pytest.raises(ValueError, match="manual optimization"):
        app.Regression().automatic_optimization = True
    with pytest.raises(RuntimeError, match="built when training starts"):
        app.Regression().solver  # noqa: B018


def test_eclearn_imports_without_lightning():
    code = (
        "import sys; sys.modules['lightning'] = None; sys.modules['pytorch_lightning'] = None\n"
        "import eclearn, eclearn.integrations.lightning as m\n"
        "assert 'lightning' not in [k for k, v in sys.modules.items() if v is not None]\n"
        "try:\n    m.require_lightning()\nexcept ImportError as e:\n    print(e)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert "pip install 'eclearn[lightning]'" in out.stdout


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_ddp_two_processes_equal_one_process(tmp_path):
    """strategy="ddp", 2 CPU processes × 8 rows = 1 process × the 16-row global batch.
    Lightning gives each rank a shuffled DistributedSampler shard (seed 0, set_epoch per
    epoch); the one process reads the same permutation whole."""
    out = tmp_path / "ddp.pt"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "OMP_NUM_THREADS": "1",
        "PL_DISABLE_FORK": "1",
    }
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("lightning_ddp.py")),
            str(out),
            str(STEPS),
            "8",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = torch.load(out, weights_only=False)
    one, _ = fit(STEPS, tmp_path / "one", data=app.global_loader(16))
    single = app.snapshot(one)
    assert set(two) == set(single)
    for key in single:
        torch.testing.assert_close(two[key], single[key], rtol=0, atol=1e-10, msg=key)
    assert torch.count_nonzero(single["mult/fit"]) > 0


def test_docs_example_runs(tmp_path, monkeypatch):
    """docs/lightning.md's example runs as printed: trains, logs, checkpoints, resumes."""
    import io
    import re
    from contextlib import redirect_stdout

    text = (ROOT / "docs" / "lightning.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with redirect_stdout(out):
        namespace: dict = {}
        exec(compile(code, "docs/lightning.md", "exec"), namespace)
    printed = out.getvalue()
    assert "steps in the history: 240" in printed, printed
    assert namespace["resumed"].solver.multipliers["gap"].item() > 0
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    metrics = list((tmp_path / "logs" / "fair").glob("version_*/metrics.csv"))
    assert metrics and "violation/gap" in metrics[0].read_text().splitlines()[0]
    assert "feasible at tol 0.01" in printed, printed
