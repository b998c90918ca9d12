"""Finding and checking user-supplied data files (never downloaded, never committed).

Applications resolve their data through :func:`resolve_data_file`: an explicit path, else
``$ECLEARN_DATA/<relative path>``; a missing file raises :class:`DataNotFoundError` whose
message says what to download and where to put it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["DataNotFoundError", "resolve_data_file", "sha256_of"]

ENV_VAR = "ECLEARN_DATA"


class DataNotFoundError(FileNotFoundError):
    """A data file is missing or is not the expected file; the message says how to fix it."""


def sha256_of(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_data_file(
    relative: str,
    path: str | os.PathLike[str] | None = None,
    *,
    what: str,
    how_to_get: str,
    sha256: str | None = None,
) -> Path:
    """Locate a data file and verify its checksum.

    ``path`` may be the file itself or a data root containing ``relative``; without it,
    ``$ECLEARN_DATA/relative`` is used.
    """
    candidates: list[Path] = []
    if path is not None:
        given = Path(path).expanduser()
        candidates += [given / relative, given] if given.is_dir() else [given]
    elif os.environ.get(ENV_VAR):
        candidates.append(Path(os.environ[ENV_VAR]).expanduser() / relative)
    for candidate in candidates:
        if candidate.is_file():
            if sha256 is not None and sha256_of(candidate) != sha256:
                raise DataNotFoundError(
                    f"{candidate} is not the expected {what} (sha256 mismatch; expected {sha256}). "
                    f"{how_to_get}"
                )
            return candidate
    looked = (
        ", ".join(str(c) for c in candidates) or f"nothing (no path given and ${ENV_VAR} unset)"
    )
    raise DataNotFoundError(
        f"{what} not found (looked at {looked}). {how_to_get} Then pass its path (--data PATH) "
        f"or set {ENV_VAR} to the folder that holds {relative}."
    )
