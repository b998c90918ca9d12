"""Locates the shared COMPAS file: ``$ECLEARN_DATA`` or the repository's sibling ``shared/data``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SIBLING_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
COMPAS_RELATIVE = Path("compas") / "compas-scores-two-years.csv"


def data_root() -> Path:
    env = os.environ.get("ECLEARN_DATA")
    return Path(env).expanduser() if env else SIBLING_DATA


@pytest.fixture(scope="session")
def compas_path() -> Path:
    """The COMPAS two-year file; skips the test when it is not available."""
    path = data_root() / COMPAS_RELATIVE
    if not path.is_file():
        pytest.skip(f"COMPAS data not found at {path} (set ECLEARN_DATA to the data folder)")
    return path
