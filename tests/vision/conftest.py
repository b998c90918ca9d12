"""Synthetic CIFAR archives written into tmp_path, and the shared subset when it is available.

The python-format writer mimics the official files, which were pickled by Python 2: byte and
text strings are stored as Python 2 ``str`` (loaded as ``bytes`` under ``encoding="bytes"``)
and numpy's reconstructor is named ``numpy.core.multiarray``.
"""

from __future__ import annotations

import io
import itertools
import os
import pickle
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

SIBLING_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SUBSET_RELATIVE = Path("cifar10") / "cifar10-subset.npz"

CIFAR10_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def data_root() -> Path:
    env = os.environ.get("ECLEARN_DATA")
    return Path(env).expanduser() if env else SIBLING_DATA


@pytest.fixture(scope="session")
def subset_path() -> Path:
    """The real shared CIFAR-10 subset; skips the test when it is not available."""
    path = data_root() / SUBSET_RELATIVE
    if not path.is_file():
        pytest.skip(f"CIFAR-10 subset not found at {path} (set ECLEARN_DATA to the data folder)")
    return path


# --------------------------------------------------------------------------- Python 2 pickles


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Protocol-2 pickler writing bytes and str as Python 2 ``str`` (SHORT_BINSTRING/BINSTRING)."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: bytes | str) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def py2_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


# --------------------------------------------------------------------------- synthetic data


@dataclass
class Synthetic:
    """Images ``uint8 [N, 32, 32, 3]`` and labels of a small fake CIFAR dataset."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    y_train_coarse: np.ndarray | None = None
    y_test_coarse: np.ndarray | None = None
    coarse_names: list[str] | None = None


def make_synthetic(
    num_classes: int = 10, n_train: int = 30, n_test: int = 8, seed: int = 0
) -> Synthetic:
    rng = np.random.default_rng(seed)
    names = CIFAR10_NAMES if num_classes == 10 else [f"class_{i}" for i in range(num_classes)]
    return Synthetic(
        x_train=rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        y_train=rng.integers(0, num_classes, n_train).astype(np.int64),
        x_test=rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        y_test=rng.integers(0, num_classes, n_test).astype(np.int64),
        class_names=names,
    )


def _rows(x: np.ndarray) -> np.ndarray:
    """Official row layout: 3072 bytes per image, channel-major (all R, then G, then B)."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1))


def _write(files: dict[str, bytes], root: Path, folder: str, archive: str | None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if archive is None:
        target = root / folder
        target.mkdir()
        for name, payload in files.items():
            (target / name).write_bytes(payload)
        return target
    target = root / archive
    with tarfile.open(target, "w:gz") as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return target


def _split5(n: int) -> list[slice]:
    edges = np.linspace(0, n, 6).astype(int)
    return [slice(a, b) for a, b in itertools.pairwise(edges)]


def cifar10_python_files(data: Synthetic) -> dict[str, bytes]:
    files = {}
    for i, rows in enumerate(_split5(len(data.y_train)), start=1):
        files[f"data_batch_{i}"] = py2_pickle(
            {
                b"batch_label": f"training batch {i} of 5".encode(),
                b"labels": [int(v) for v in data.y_train[rows]],
                b"data": _rows(data.x_train[rows]),
                b"filenames": [b"img.png"] * len(data.y_train[rows]),
            }
        )
    files["test_batch"] = py2_pickle(
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": data.y_test.tolist(),
            b"data": _rows(data.x_test),
        }
    )
    files["batches.meta"] = py2_pickle(
        {
            b"num_cases_per_batch": 10000,
            b"label_names": [n.encode() for n in data.class_names],
            b"num_vis": 3072,
        }
    )
    files["readme.html"] = b"<html></html>"
    return files


def write_cifar10_python(data: Synthetic, root: Path, archive: bool = True) -> Path:
    name = "cifar-10-python.tar.gz" if archive else None
    return _write(cifar10_python_files(data), root, "cifar-10-batches-py", name)


def write_cifar10_binary(data: Synthetic, root: Path, archive: bool = True) -> Path:
    def records(x: np.ndarray, y: np.ndarray) -> bytes:
        return np.concatenate([y.astype(np.uint8)[:, None], _rows(x)], axis=1).tobytes()

    files = {
        f"data_batch_{i}.bin": records(data.x_train[rows], data.y_train[rows])
        for i, rows in enumerate(_split5(len(data.y_train)), start=1)
    }
    files["test_batch.bin"] = records(data.x_test, data.y_test)
    files["batches.meta.txt"] = ("\n".join(data.class_names) + "\n\n").encode()
    name = "cifar-10-binary.tar.gz" if archive else None
    return _write(files, root, "cifar-10-batches-bin", name)


def make_synthetic_cifar100(n_train: int = 40, n_test: int = 10, seed: int = 1) -> Synthetic:
    data = make_synthetic(100, n_train, n_test, seed)
    data.y_train_coarse = data.y_train // 5
    data.y_test_coarse = data.y_test // 5
    data.coarse_names = [f"superclass_{i}" for i in range(20)]
    return data


def write_cifar100(data: Synthetic, root: Path, archive: bool = True) -> Path:
    def split(x: np.ndarray, fine: np.ndarray, coarse: np.ndarray) -> bytes:
        return py2_pickle(
            {
                b"filenames": [b"f.png"] * len(fine),
                b"batch_label": b"batch",
                b"fine_labels": fine.tolist(),
                b"coarse_labels": coarse.tolist(),
                b"data": _rows(x),
            }
        )

    assert data.coarse_names is not None
    files = {
        "train": split(data.x_train, data.y_train, data.y_train_coarse),
        "test": split(data.x_test, data.y_test, data.y_test_coarse),
        "meta": py2_pickle(
            {
                b"fine_label_names": [n.encode() for n in data.class_names],
                b"coarse_label_names": [n.encode() for n in data.coarse_names],
            }
        ),
    }
    name = "cifar-100-python.tar.gz" if archive else None
    return _write(files, root, "cifar-100-python", name)


def write_subset_npz(data: Synthetic, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        x_train=data.x_train,
        y_train=data.y_train,
        x_test=data.x_test,
        y_test=data.y_test,
        class_names=np.array(data.class_names),
    )
    return path


@pytest.fixture
def synthetic() -> Synthetic:
    return make_synthetic()


@pytest.fixture
def no_data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset $ECLEARN_DATA so lookups depend only on the path the test passes."""
    monkeypatch.delenv("ECLEARN_DATA", raising=False)
