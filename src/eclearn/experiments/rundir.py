"""Run directories on disk: their file names, the exclusive lock of a live run, the record
of which files eclearn created there, guarded writes, and reading runs back.

This module sits below the runner and the reports (both import it; it imports neither), so
everything that touches a run directory's files goes through one place:

* :class:`RunLock` — ``fcntl.flock`` on ``DIR/.lock`` for the life of the training process
  (released by the OS however the process ends, so ``kill -9`` never leaves a stale lock).
* :class:`OwnedFiles` — the manifest ``DIR/.eclearn-files.json`` of the files eclearn
  wrote into a folder (a run directory, or a report's ``--out``). A file is only ever
  replaced or removed when the manifest lists it; any other file in the way is an error
  naming it. Writes are atomic (temporary file + rename) and guarded: an ``OSError`` (a
  full disk, a permission) becomes one :class:`RunnerError` line with the fix.
* :func:`read_run` / :func:`find_runs` — ``config.json`` and ``metrics.json`` as
  :class:`~eclearn.experiments.base.RunRecord` s.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from eclearn._io import atomic_write, atomic_write_text, save_checkpoint
from eclearn.datafiles import DataNotFoundError
from eclearn.experiments.base import RunRecord
from eclearn.experiments.config import RunnerError

__all__ = [
    "CERTIFICATE_FILE",
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "FIGURE_DIR",
    "HISTORY_FILE",
    "LOCK_FILE",
    "LOG_FILE",
    "MANIFEST_FILE",
    "METRICS_FILE",
    "MULTIPLIERS_FILE",
    "OwnedFiles",
    "RunLock",
    "find_runs",
    "guarded",
    "read_run",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CERTIFICATE_FILE = "certificate.json"
HISTORY_FILE = "history.csv"
CHECKPOINT_FILE = "checkpoint.pt"
MULTIPLIERS_FILE = "multipliers.pt"
LOG_FILE = "log.txt"
FIGURE_DIR = "figures"
LOCK_FILE = ".lock"
MANIFEST_FILE = ".eclearn-files.json"
LEGACY_RUN_FILES = (
    CONFIG_FILE,
    METRICS_FILE,
    CERTIFICATE_FILE,
    HISTORY_FILE,
    CHECKPOINT_FILE,
    MULTIPLIERS_FILE,
    LOG_FILE,
)
"""What a run directory written before the manifest existed is taken to own."""
_BOOKKEEPING = (LOCK_FILE, MANIFEST_FILE)


# ---------------------------------------------------------------------------- lock
class RunLock:
    """An exclusive lock on a run directory for the life of the process that trains it.

    ``fcntl.flock`` on ``DIR/.lock``: the OS releases it when the process ends, however it
    ends (``kill -9`` included), so a stale lock never blocks a rerun. The holder writes its
    pid into the file, so a second process can say who holds it.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunnerError(
                f"{self.path.parent} is in use by another eclearn process (pid {holder}); wait "
                "for it to finish or stop it, then run again"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_not_in_use(run_dir: Path) -> None:
    """Raise if a live process holds ``run_dir``'s lock (before replacing its files)."""
    if (run_dir / LOCK_FILE).exists():
        RunLock(run_dir).acquire().release()


# ---------------------------------------------------------------------------- writes
@contextmanager
def guarded(path: Path, then: str) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` into one :class:`RunnerError` line that
    says what to do ``then`` (after freeing space or fixing permissions)."""
    try:
        yield
    except OSError as err:
        if isinstance(err, DataNotFoundError):
            raise
        reason = err.strerror or str(err)
        raise RunnerError(
            f"could not write {path}: {reason}; free disk space or fix the permissions, then {then}"
        ) from err


class OwnedFiles:
    """The files eclearn created in ``folder``, recorded in ``folder/.eclearn-files.json``.

    ``what`` names the folder's kind in messages ("run directory", "report folder");
    ``then`` is the advice after a failed write ("continue with `eclearn run --resume
    DIR`"). A folder with no manifest but a ``config.json`` is a run directory from before
    the manifest: it is taken to own the run files of :data:`LEGACY_RUN_FILES` and its
    ``figures/*.png``.
    """

    def __init__(self, folder: str | os.PathLike[str], *, what: str, then: str) -> None:
        self.folder = Path(folder)
        self.what = what
        self.then = then
        self.manifest = self.folder / MANIFEST_FILE
        self.owned: set[str] = self._read()

    # -- the record
    def _read(self) -> set[str]:
        if self.manifest.is_file():
            try:
                names = json.loads(self.manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                raise RunnerError(
                    f"{self.manifest} is damaged (not the JSON list of files eclearn wrote); "
                    "delete it only if every file in the folder is eclearn's, or choose "
                    "another folder"
                ) from None
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise RunnerError(
                    f"{self.manifest} is damaged (not the JSON list of files eclearn wrote); "
                    "delete it only if every file in the folder is eclearn's, or choose "
                    "another folder"
                )
            return set(names)
        if (self.folder / CONFIG_FILE).is_file():  # a run directory older than the manifest
            legacy = {n for n in LEGACY_RUN_FILES if (self.folder / n).exists()}
            figures = self.folder / FIGURE_DIR
            if figures.is_dir():
                legacy |= {f"{FIGURE_DIR}/{p.name}" for p in figures.glob("*.png")}
            return legacy
        return set()

    def _save(self) -> None:
        text = json.dumps(sorted(self.owned), indent=0) + "\n"
        with guarded(self.manifest, self.then):
            atomic_write_text(self.manifest, text)

    def relative(self, path: Path) -> str:
        try:
            return Path(path).resolve().relative_to(self.folder.resolve()).as_posix()
        except ValueError:
            raise RunnerError(
                f"{path} lies outside {self.folder}: eclearn writes only inside the {self.what}"
            ) from None

    def owns(self, path: Path) -> bool:
        return self.relative(path) in self.owned

    def foreign(self) -> list[Path]:
        """Files in the folder (recursively) that eclearn did not write, sorted."""
        found = []
        for path in sorted(self.folder.rglob("*")):
            if path.is_dir():
                continue
            rel = path.relative_to(self.folder).as_posix()
            if rel in self.owned or rel in _BOOKKEEPING or _is_stray_temporary(path):
                continue
            found.append(path)
        return found

    def claim(self, path: Path) -> Path:
        """Record ``path`` as eclearn's before writing it; an existing file eclearn did not
        write is an error naming it (the user's file is never replaced)."""
        rel = self.relative(path)
        if rel in self.owned:
            return path
        if path.exists() or path.is_symlink():
            raise RunnerError(
                f"{path} exists and was not written by eclearn: it is left untouched; move it "
                f"away or choose another folder"
            )
        self.owned.add(rel)
        self._save()
        return path

    def adopt(self, paths: Sequence[Path]) -> None:
        """Record files eclearn code wrote directly (an experiment's own artifacts)."""
        new = {self.relative(p) for p in paths if p.is_file()} - self.owned
        if new:
            self.owned |= new
            self._save()

    def snapshot(self) -> set[Path]:
        """Every file in the folder now (for :meth:`adopt` of what a hook added)."""
        return {p for p in self.folder.rglob("*") if p.is_file()}

    # -- writes
    def write_text(self, path: Path, text: str) -> Path:
        self.claim(path)
        with guarded(path, self.then):
            return atomic_write_text(path, text)

    def write_bytes(self, path: Path, data: bytes) -> Path:
        self.claim(path)
        with guarded(path, self.then):
            return atomic_write(path, lambda handle: handle.write(data))

    def save_checkpoint(self, obj: Any, path: Path) -> Path:
        self.claim(path)
        with guarded(path, self.then):
            return save_checkpoint(obj, path)

    def mkdir(self, path: Path) -> Path:
        with guarded(path, self.then):
            path.mkdir(parents=True, exist_ok=True)
        return path

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A private temporary folder inside ``folder`` for code that writes files whose
        names are not known beforehand (figure hooks); :meth:`install` moves them in."""
        with guarded(self.folder, self.then):
            tmp = Path(tempfile.mkdtemp(prefix=".staging-", suffix=".tmp", dir=self.folder))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def install(self, staged: Sequence[Path], staging: Path, dest: Path) -> list[Path]:
        """Move files written under ``staging`` to the same place under ``dest``
        (claiming each first); returns their final paths in the order given."""
        final = []
        for path in staged:
            target = dest / Path(path).resolve().relative_to(staging.resolve())
            self.claim(target)
            with guarded(target, self.then):
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
            final.append(target)
        return final

    def clear(self, first: Sequence[str] = ()) -> None:
        """Remove every file eclearn wrote here (``first`` before the rest: ``metrics.json``
        first, so a half-cleared run never looks complete), then the manifest. Refuses —
        before removing anything — when the folder holds files eclearn did not write."""
        others = self.foreign()
        if others:
            shown = ", ".join(str(p) for p in others[:3])
            more = f" and {len(others) - 3} more" if len(others) > 3 else ""
            raise RunnerError(
                f"{self.folder} holds files eclearn did not write ({shown}{more}); they are "
                f"left untouched and the {self.what} is not replaced: move them away or "
                "choose another folder"
            )
        order = [n for n in first if n in self.owned] + sorted(self.owned - set(first))
        with guarded(self.folder, self.then):
            for rel in order:
                (self.folder / rel).unlink(missing_ok=True)
            for leftover in self.folder.glob(".*.tmp"):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
            for sub in sorted({(self.folder / r).parent for r in order}, reverse=True):
                if sub != self.folder and sub.is_dir() and not any(sub.iterdir()):
                    sub.rmdir()
            self.owned = set()
            self.manifest.unlink(missing_ok=True)


def _is_stray_temporary(path: Path) -> bool:
    """A temporary file left by a killed atomic write (``.NAME.XXXX.tmp``) or staging."""
    return any(part.startswith(".") and part.endswith(".tmp") for part in path.parts[-2:])


# ---------------------------------------------------------------------------- reading
def read_run(path: str | os.PathLike[str]) -> RunRecord:
    """Read one run directory (``config.json``, and ``metrics.json`` when complete)."""
    path = Path(path)
    if not path.is_dir():
        raise RunnerError(f"{path}: no such directory")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise RunnerError(
            f"{path} is not a run directory (no {CONFIG_FILE}); pass a directory "
            "written by `eclearn run` (DIR/seed-<n>) or a folder holding them"
        )
    info = read_json(config_path)
    if not isinstance(info, dict) or not {"experiment", "seed", "config"} <= set(info):
        raise RunnerError(
            f"{config_path} is not an eclearn run config (needs experiment, seed and config)"
        )
    metrics = None
    if (path / METRICS_FILE).is_file():
        metrics = read_json(path / METRICS_FILE)
        if not isinstance(metrics, dict):
            raise RunnerError(f"{path / METRICS_FILE} is not a JSON object")
    config = dict(info.pop("config"))
    label = str(info.get("label") or config.get("formulation") or info["experiment"])
    return RunRecord(
        path=path,
        experiment=str(info["experiment"]),
        seed=int(info["seed"]),
        label=label,
        config=config,
        metrics=metrics,
        info=info,
    )


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunnerError(
            f"{path} is not valid JSON ({err}); the run directory is damaged"
        ) from None
    except OSError as err:
        raise RunnerError(f"{path}: cannot read ({err.strerror})") from None


def find_runs(paths: Sequence[str | os.PathLike[str]]) -> list[RunRecord]:
    """Run directories given directly or found (recursively) below the given folders."""
    found: dict[Path, RunRecord] = {}
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise RunnerError(f"{path}: no such directory")
        if (path / CONFIG_FILE).is_file():
            dirs = [path]
        elif path.is_dir():
            dirs = sorted({p.parent for p in path.rglob(CONFIG_FILE)})
            if not dirs:
                raise RunnerError(
                    f"{path} holds no run directories (no {CONFIG_FILE} below it); "
                    "pass directories written by `eclearn run`"
                )
        else:
            raise RunnerError(
                f"{path} is not a run directory; pass a directory written by `eclearn run`"
            )
        for d in dirs:
            key = d.resolve()
            if key not in found:
                found[key] = read_run(d)
    return list(found.values())
