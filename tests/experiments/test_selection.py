"""`eclearn run` writes certificate.json and applies --select (issue: certificates)."""

from __future__ import annotations

import json

import pytest

from eclearn.cli import main

FAST = ["--set", "epochs=6", "--set", "n_train=2048", "--no-progress"]


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_certificate_is_written_and_summarised(tmp_path):
    assert main(["run", "toy", "--out", "r", *FAST]) == 0
    cert = json.loads((tmp_path / "r/seed-0/certificate.json").read_text())
    metrics = json.loads((tmp_path / "r/seed-0/metrics.json").read_text())
    assert set(cert["constraints"]) == {"group_mean", "moment"}
    for entry in cert["constraints"].values():
        assert entry["verdict"] in ("satisfied", "violated", "cannot tell")
        for low, high in entry["interval"]:
            assert low <= high
    assert metrics["certificate_verdicts"] == {
        n: c["verdict"] for n, c in cert["constraints"].items()
    }
    assert "confidence" in metrics["certificate_summary"]


@pytest.mark.parametrize("rule", ["best", "average", "mixture"])
def test_select_rules_are_applied_and_described(tmp_path, rule):
    longer = ["--set", "epochs=30"] if rule == "mixture" else []
    assert main(["run", "toy", "--out", rule, "--select", rule, *FAST, *longer]) == 0
    metrics = json.loads((tmp_path / f"{rule}/seed-0/metrics.json").read_text())
    config = json.loads((tmp_path / f"{rule}/seed-0/config.json").read_text())
    assert config["config"]["select"] == rule
    assert metrics["selection"]["rule"] == rule
    assert metrics["selection"]["description"]
    if rule == "mixture":
        assert abs(sum(metrics["selection"]["weights"]) - 1) < 1e-9


def test_select_survives_resume_bitwise(tmp_path, monkeypatch):
    args = ["run", "toy", "--select", "best", *FAST]
    assert main([*args, "--out", "straight"]) == 0
    monkeypatch.setenv("ECLEARN_INTERRUPT_AT_STEP", "5")
    assert main([*args, "--out", "cut"]) == 130
    monkeypatch.delenv("ECLEARN_INTERRUPT_AT_STEP")
    assert main(["run", "--resume", "cut/seed-0", "--no-progress"]) == 0
    a = json.loads((tmp_path / "straight/seed-0/metrics.json").read_text())
    b = json.loads((tmp_path / "cut/seed-0/metrics.json").read_text())
    for key in ("selection", "param_error", "certificate_verdicts"):
        assert a[key] == b[key], key
