"""Atomic file writes: write to a temporary file in the same folder, then rename.

A crash or a full disk leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

__all__ = ["atomic_write", "atomic_write_text", "load_checkpoint", "save_checkpoint"]

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(handle)`` on a temporary file and move it to ``path`` when it succeeded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def save_checkpoint(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` atomically."""
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` (tensors and plain containers, no pickle code)."""
    return torch.load(path, map_location=map_location, weights_only=True)
