"""Atomic file writes (a temporary file in the same folder, then rename) and verified
checkpoint loads.

A crash or a full disk leaves either the old file or the new one, never half of one. A
checkpoint is what ``torch.save`` writes (a zip archive: users may ``torch.load`` it
directly); ``load_checkpoint`` first checks the CRC-32 of every archive member, which
``torch.load`` does not, so a flipped byte or a truncated copy is refused instead of
resuming from changed tensors. CRCs cover the records' data but not the zip directory (a
flipped offset there made ``torch.load`` read tensors from the wrong place), so
``save_checkpoint`` also stores a SHA-256 of the whole file in the archive comment — a field
``torch.load`` ignores — and ``load_checkpoint`` verifies it when present (files written by
plain ``torch.save`` have none and get the CRC check only).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "CheckpointError",
    "atomic_write",
    "atomic_write_text",
    "load_checkpoint",
    "save_checkpoint",
]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted: damaged, truncated, or not eclearn's."""


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


_END = b"PK\x05\x06"  # end-of-central-directory record: 22 bytes, then the comment
_SEAL = b"eclearn-sha256:"
_SEAL_SIZE = len(_SEAL) + 64


def _sealed(data: bytes) -> bytes:
    """``data`` (a zip archive without comment) with the SHA-256 of everything before the
    comment written as the archive comment."""
    if len(data) < 22 or data[-22:-18] != _END or data[-2:] != b"\x00\x00":
        return data  # not the layout torch.save writes: leave it to the CRC check
    head = data[:-2] + _SEAL_SIZE.to_bytes(2, "little")
    return head + _SEAL + hashlib.sha256(head).hexdigest().encode("ascii")


def _seal_intact(data: bytes) -> bool | None:
    """True/False when ``data`` ends with a seal that matches/does not; None without one
    (a plain ``torch.save`` file, or a seal whose own marker was damaged: the comment is
    then all the damage, which changes no tensor)."""
    if data.rfind(_SEAL, max(0, len(data) - 2 * _SEAL_SIZE)) < 0:
        return None
    if len(data) < _SEAL_SIZE + 22 or not data[-_SEAL_SIZE:].startswith(_SEAL):
        return False
    digest = hashlib.sha256(data[:-_SEAL_SIZE]).hexdigest().encode("ascii")
    return digest == data[-64:]


def save_checkpoint(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` atomically (serialised in memory first, so a failure of the
    serialiser never reaches the disk and a full disk is an ``OSError``), sealed with a
    SHA-256 of the file in the zip comment."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = _sealed(buffer.getvalue())
    return atomic_write(path, lambda handle: handle.write(data))


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """Verify the archive's checksums and ``torch.load`` with ``weights_only=True``
    (tensors and plain containers: pickled code is never executed). Raises
    :class:`CheckpointError` with one line naming the file when it is damaged or not a
    checkpoint."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror or err})") from None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, NotImplementedError):
        raise CheckpointError(
            f"{path} is not an eclearn checkpoint or is damaged (not a readable torch.save "
            "archive); eclearn never loads pickled code: delete or replace the file"
        ) from None
    if bad is None and _seal_intact(data) is False:
        raise CheckpointError(
            f"{path} is damaged (its SHA-256 does not match the one saved with it: a changed "
            "or truncated copy); restore it from a backup, or delete it to start over"
        )
    if bad is not None:
        raise CheckpointError(
            f"{path} is damaged (the checksum of its record {bad!r} does not match: a changed "
            "or truncated copy); restore it from a backup, or delete it to start over"
        )
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # torch's messages run to many lines of pickling advice
        raise CheckpointError(
            f"{path} is not an eclearn checkpoint or is damaged ({type(err).__name__} while "
            "reading it); eclearn never loads pickled code: delete or replace the file"
        ) from None
