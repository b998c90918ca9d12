"""Checkpoint files that cannot be trusted are refused with one line naming the file.

A checkpoint is a plain ``torch.save`` archive; loading checks every member's CRC-32, which
``torch.load`` alone does not (before, most single-byte flips loaded with changed tensors):
a flip either is refused or changes nothing that loads (alignment padding). Random bytes and pickles that would run code are "not an
eclearn checkpoint", never executed, and never answered with torch's multi-line advice.
"""

from __future__ import annotations

import os
import pickle
import random

import pytest
import torch

import eclearn as ecl
from tests.core.conftest import full_batch, vector_equality

from .conftest import trials


def saved(tmp_path):
    q = vector_equality()
    model = q.model()
    solver = ecl.PrimalDual(q.problem, model, torch.optim.SGD(model.parameters(), lr=0.1))
    solver.fit(full_batch(), max_steps=3)
    path = tmp_path / "ckpt.pt"
    solver.save(path)
    return q, solver, path


def fresh(q):
    model = q.model()
    return ecl.PrimalDual(q.problem, model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_round_trip_and_legacy_files_load(tmp_path):
    q, solver, path = saved(tmp_path)
    other = fresh(q)
    other.load(path)
    assert torch.equal(other.multipliers["eq"], solver.multipliers["eq"])
    direct = tmp_path / "direct.pt"
    torch.save(solver.state_dict(), direct)  # written by torch.save directly
    fresh(q).load(direct)
    assert torch.equal(torch.load(path, weights_only=True)["model"]["theta"], other.model.theta)


def test_no_byte_flip_loads_changed_tensors(tmp_path):
    _, solver, path = saved(tmp_path)
    reference = solver.state_dict()
    data = path.read_bytes()
    refused = 0
    flips = min(len(data), trials(60))
    for position in random.Random(0).sample(range(len(data)), flips):
        damaged = bytearray(data)
        damaged[position] ^= 0x5A
        target = tmp_path / f"flip-{position}.pt"
        target.write_bytes(bytes(damaged))
        try:
            state = ecl.load_checkpoint(target)
        except ecl.CheckpointError as err:
            refused += 1
            assert str(target) in str(err) and "\n" not in str(err)
            continue
        assert torch.equal(state["model"]["theta"], reference["model"]["theta"]), position
        key = next(iter(reference["multipliers"]))
        assert torch.equal(
            state["multipliers"][key]["value"], reference["multipliers"][key]["value"]
        ), position
    print(f"byte flips: {flips} trials, {refused} refused, {flips - refused} loaded unchanged")
    assert refused >= 0.6 * flips  # most bytes are data or headers; the rest is padding


def test_truncated_file_is_damaged(tmp_path):
    _, _, path = saved(tmp_path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ecl.CheckpointError, match="is damaged"):
        ecl.load_checkpoint(path)


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("kind", ["random", "pickle", "torch-pickle"])
def test_foreign_files_are_not_checkpoints_and_run_no_code(tmp_path, kind, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "foreign.pt"
    if kind == "random":
        path.write_bytes(random.Random(1).randbytes(4096))
    elif kind == "pickle":
        path.write_bytes(pickle.dumps(Exploit()))
    else:
        torch.save({"payload": Exploit()}, path)
    with pytest.raises(ecl.CheckpointError, match="not an eclearn checkpoint") as info:
        ecl.load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and "weights_only" not in message
    assert not (tmp_path / "pwned").exists()


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ecl.CheckpointError, match="cannot be read"):
        ecl.load_checkpoint(tmp_path / "nope.pt")
