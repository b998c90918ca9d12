"""CIFAR data: loaders for the official archives and the shared subset, normalisation, batches.

Nothing is ever downloaded. Files are found through an explicit ``path`` or ``$ECLEARN_DATA``;
a missing file raises :class:`~eclearn.datafiles.DataNotFoundError` saying what to download
and where to put it. Archives are read in memory with :mod:`tarfile` (never extracted), and
the python-format batches are unpickled by a restricted unpickler that only rebuilds dicts,
lists, strings, ints and numpy arrays.

Images are kept as ``uint8`` arrays in **channel-last** layout ``[N, 32, 32, 3]`` (the layout
of the shared subset and of image files); :func:`to_tensor` turns them into the normalised
``float32 [N, 3, 32, 32]`` tensors that models consume.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from eclearn.batches import Batches
from eclearn.datafiles import ENV_VAR, DataNotFoundError, resolve_data_file

__all__ = [
    "DATASETS",
    "ImageDataset",
    "channel_stats",
    "load_cifar10",
    "load_cifar10_subset",
    "load_cifar100",
    "load_dataset",
    "make_batches",
    "to_tensor",
]

PathLike = str | os.PathLike[str]

CIFAR_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
SUBSET_FILE = "cifar10/cifar10-subset.npz"
SUBSET_SHA256 = "03f0a3b2cb5546767b4809e42c3dca7db51028300bb7e066e53382b903f1b745"
DATASETS = ("cifar10", "cifar100", "cifar10-subset")

_IMAGE_BYTES = 3 * 32 * 32

# Official md5 sums (the CIFAR page lists those of the archives; the per-file ones are those
# of the extracted python batches, as also checked by torchvision).
_ARCHIVE_MD5 = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
}
_MEMBER_MD5 = {
    "cifar10-python": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
    "cifar100-python": {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
}


@dataclass(frozen=True)
class _Format:
    """One on-disk layout of a CIFAR dataset: its folder, its archive and its member files."""

    key: str
    folder: str
    archive: str
    train: tuple[str, ...]
    test: str
    meta: str

    @property
    def members(self) -> tuple[str, ...]:
        return (*self.train, self.test, self.meta)


_CIFAR10_PY = _Format(
    "cifar10-python",
    "cifar-10-batches-py",
    "cifar-10-python.tar.gz",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch",
    "batches.meta",
)
_CIFAR10_BIN = _Format(
    "cifar10-binary",
    "cifar-10-batches-bin",
    "cifar-10-binary.tar.gz",
    tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test_batch.bin",
    "batches.meta.txt",
)
_CIFAR100_PY = _Format(
    "cifar100-python", "cifar-100-python", "cifar-100-python.tar.gz", ("train",), "test", "meta"
)


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image classification dataset held in memory.

    ``x_train``/``x_test``: ``uint8 [N, 32, 32, 3]`` (channel-last); ``y_train``/``y_test``:
    ``int64 [N]`` in ``[0, len(class_names))``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
                raise ValueError(
                    f"ImageDataset: x_{split} must be uint8 [N, H, W, 3] (channel-last), "
                    f"got {x.dtype} {list(x.shape)}"
                )
            if y.dtype != np.int64 or y.shape != (x.shape[0],):
                raise ValueError(
                    f"ImageDataset: y_{split} must be int64 [{x.shape[0]}] (one label per image), "
                    f"got {y.dtype} {list(y.shape)}"
                )
            if y.size and (y.min() < 0 or y.max() >= len(self.class_names)):
                raise ValueError(
                    f"ImageDataset: y_{split} has labels outside [0, {len(self.class_names)}) "
                    f"(range {y.min()}..{y.max()}); check class_names"
                )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# --------------------------------------------------------------------------- restricted pickle


def _allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's _reconstruct, any version
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds only builtin containers and numpy arrays; any other global is refused."""

    def __init__(self, file: io.BytesIO, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"{self._source}: refusing to unpickle the global {module}.{name}; CIFAR batches "
                "hold only dicts, lists, bytes, ints and numpy arrays. Use the official archive "
                f"from {CIFAR_PAGE}"
            ) from None


def _unpickle(payload: bytes, source: str) -> dict[str, Any]:
    obj = _RestrictedUnpickler(io.BytesIO(payload), source).load()
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


# --------------------------------------------------------------------------- locating files


def _how_to_get(fmts: tuple[_Format, ...], subdir: str) -> str:
    archives = " or ".join(f'"{f.archive}"' for f in fmts)
    folders = " or ".join(f"{f.folder}/" for f in fmts)
    return (
        f"Download {archives} from the official CIFAR page of the University of Toronto "
        f"({CIFAR_PAGE}) and put the archive (or its extracted folder {folders}) in your data "
        f"folder, e.g. ${ENV_VAR}/{subdir}/."
    )


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_members(
    source: Path, fmts: tuple[_Format, ...], what: str, how: str
) -> tuple[_Format, dict[str, bytes]]:
    """Read the member files of the first format complete in ``source`` (a folder or a tar)."""
    wanted = {name for fmt in fmts for name in fmt.members}
    found: dict[str, bytes] = {}
    if source.is_dir():
        for name in wanted:
            if (source / name).is_file():
                found[name] = (source / name).read_bytes()
    else:
        try:
            with tarfile.open(source, "r:*") as tar:
                for member in tar:
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in wanted and base not in found:
                        handle = tar.extractfile(member)
                        if handle is not None:
                            found[base] = handle.read()
        except (tarfile.TarError, OSError) as error:
            raise DataNotFoundError(
                f"{source} is not a readable tar archive of {what} ({error}). {how}"
            ) from error
    for fmt in fmts:
        if all(name in found for name in fmt.members):
            return fmt, {name: found[name] for name in fmt.members}
    expected = "; ".join(", ".join(fmt.members) for fmt in fmts)
    raise DataNotFoundError(
        f"{source} does not hold the files of {what} (expected {expected}; found "
        f"{sorted(found) or 'none of them'}). {how}"
    )


def _verify(source: Path, fmt: _Format, members: Mapping[str, bytes], how: str) -> None:
    if source.is_dir():
        for name, expected in _MEMBER_MD5.get(fmt.key, {}).items():
            got = hashlib.md5(members[name], usedforsecurity=False).hexdigest()
            if got != expected:
                raise DataNotFoundError(
                    f"{source / name} is not the official file (md5 {got}, expected {expected}). "
                    f"{how} Pass verify=False to load modified files anyway."
                )
    else:
        got, expected = _md5_of(source), _ARCHIVE_MD5[fmt.archive]
        if got != expected:
            raise DataNotFoundError(
                f"{source} is not the official {fmt.archive} (md5 {got}, expected {expected}). "
                f"{how} Pass verify=False to load a modified archive anyway."
            )


def _is_extracted(folder: Path, fmts: tuple[_Format, ...]) -> bool:
    return any((folder / fmt.test).is_file() and (folder / fmt.meta).is_file() for fmt in fmts)


def _locate(
    path: PathLike | None, fmts: tuple[_Format, ...], subdir: str, what: str, how: str
) -> Path:
    """The folder or archive to read: ``path`` itself, or a known name under a data root."""
    if path is not None:
        given = Path(path).expanduser()
        if given.is_file() or (given.is_dir() and _is_extracted(given, fmts)):
            return given
        roots = [given] if given.is_dir() else []
        looked = [given]
    elif os.environ.get(ENV_VAR):
        roots = [Path(os.environ[ENV_VAR]).expanduser()]
        looked = []
    else:
        roots, looked = [], []
    for root in roots:
        for base in (root, root / subdir):
            for fmt in fmts:
                for candidate in (base / fmt.folder, base / fmt.archive):
                    looked.append(candidate)
                    if candidate.is_file() or (
                        candidate.is_dir() and _is_extracted(candidate, fmts)
                    ):
                        return candidate
    where = ", ".join(str(p) for p in looked) or f"nothing (no path given and ${ENV_VAR} unset)"
    raise DataNotFoundError(
        f"{what} not found (looked at {where}). {how} Then pass its path (path=... / --data PATH) "
        f"or set {ENV_VAR} to the folder that holds it."
    )


# --------------------------------------------------------------------------- decoding


def _python_batch(
    payload: bytes, source: str, label_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(payload, source)
    if "data" not in batch or label_key not in batch:
        raise ValueError(
            f"{source}: a CIFAR batch needs the keys 'data' and '{label_key}', got {sorted(batch)}"
        )
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _IMAGE_BYTES:
        raise ValueError(
            f"{source}: 'data' must be uint8 [N, {_IMAGE_BYTES}], got {data.dtype} "
            f"{list(data.shape)}"
        )
    return _images_and_labels(data, labels, source, num_classes)


def _binary_batch(payload: bytes, source: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    record = 1 + _IMAGE_BYTES
    if len(payload) % record:
        raise ValueError(
            f"{source}: size {len(payload)} is not a whole number of {record}-byte records "
            "(1 label byte + 3072 pixel bytes); the file is truncated or not CIFAR-10 binary"
        )
    rows = np.frombuffer(payload, dtype=np.uint8).reshape(-1, record)
    return _images_and_labels(rows[:, 1:], rows[:, 0].astype(np.int64), source, num_classes)


def _images_and_labels(
    data: np.ndarray, labels: np.ndarray, source: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    if labels.shape != (data.shape[0],):
        raise ValueError(
            f"{source}: {data.shape[0]} images but {labels.shape[0]} labels; the file is corrupt"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{source}: labels outside [0, {num_classes}) (range {labels.min()}..{labels.max()})"
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _names(raw: Any, source: str) -> list[str]:
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{source}: class names must be a non-empty list, got {raw!r:.80}")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in raw]


def _assemble(
    fmt: _Format,
    members: Mapping[str, bytes],
    source: Path,
    decode: Callable[[bytes, str], tuple[np.ndarray, np.ndarray]],
    class_names: list[str],
) -> ImageDataset:
    train = [decode(members[name], f"{source}:{name}") for name in fmt.train]
    x_test, y_test = decode(members[fmt.test], f"{source}:{fmt.test}")
    return ImageDataset(
        x_train=np.ascontiguousarray(np.concatenate([x for x, _ in train])),
        y_train=np.concatenate([y for _, y in train]),
        x_test=np.ascontiguousarray(x_test),
        y_test=y_test,
        class_names=class_names,
    )


# --------------------------------------------------------------------------- loaders


def load_cifar10(path: PathLike | None = None, *, verify: bool = True) -> ImageDataset:
    """Load CIFAR-10 from the official python or binary archive, or its extracted folder.

    ``path`` is the archive, the extracted folder, or a data root holding one of them (also
    looked up under ``<root>/cifar10/``); without it ``$ECLEARN_DATA`` is the root.
    ``verify`` checks the official md5 sums (archives and extracted python batches; an
    extracted binary folder is only checked for its record layout).
    """
    fmts = (_CIFAR10_PY, _CIFAR10_BIN)
    what, how = "CIFAR-10", _how_to_get(fmts, "cifar10")
    source = _locate(path, fmts, "cifar10", what, how)
    fmt, members = _read_members(source, fmts, what, how)
    if verify:
        _verify(source, fmt, members, how)
    if fmt is _CIFAR10_PY:
        meta = _unpickle(members[fmt.meta], f"{source}:{fmt.meta}")
        names = _names(meta.get("label_names"), f"{source}:{fmt.meta} label_names")

        def decode(payload: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
            return _python_batch(payload, where, "labels", len(names))
    else:
        text = members[fmt.meta].decode("utf-8")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        names = _names(lines, f"{source}:{fmt.meta}")

        def decode(payload: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
            return _binary_batch(payload, where, len(names))

    return _assemble(fmt, members, source, decode, names)


def load_cifar100(
    path: PathLike | None = None,
    label: Literal["fine", "coarse"] = "fine",
    *,
    verify: bool = True,
) -> ImageDataset:
    """Load CIFAR-100 from ``cifar-100-python.tar.gz`` or its extracted ``cifar-100-python/``.

    ``label="fine"`` gives the 100 classes, ``"coarse"`` the 20 superclasses. ``path`` and
    ``verify`` work as in :func:`load_cifar10` (data root subfolder ``cifar100/``).
    """
    if label not in ("fine", "coarse"):
        raise ValueError(f"load_cifar100: label must be 'fine' or 'coarse', got {label!r}")
    fmts = (_CIFAR100_PY,)
    what, how = "CIFAR-100", _how_to_get(fmts, "cifar100")
    source = _locate(path, fmts, "cifar100", what, how)
    fmt, members = _read_members(source, fmts, what, how)
    if verify:
        _verify(source, fmt, members, how)
    meta = _unpickle(members[fmt.meta], f"{source}:{fmt.meta}")
    names = _names(meta.get(f"{label}_label_names"), f"{source}:{fmt.meta} {label}_label_names")

    def decode(payload: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
        return _python_batch(payload, where, f"{label}_labels", len(names))

    return _assemble(fmt, members, source, decode, names)


def load_cifar10_subset(path: PathLike | None = None, *, verify: bool = True) -> ImageDataset:
    """Load the project's CIFAR-10 subset ``cifar10/cifar10-subset.npz`` (10 000 + 5 000 images).

    ``path`` is the ``.npz`` file or a data root holding ``cifar10/cifar10-subset.npz``;
    without it ``$ECLEARN_DATA`` is the root. ``verify`` checks the file's sha256.
    """
    file = resolve_data_file(
        SUBSET_FILE,
        path,
        what="the CIFAR-10 subset",
        how_to_get=(
            "It is the project's shared test subset (shared/data/cifar10/cifar10-subset.npz next "
            "to the repository, read-only; never copy it into the repo). For the full dataset "
            f"use load_cifar10 with cifar-10-python.tar.gz from {CIFAR_PAGE}."
        ),
        sha256=SUBSET_SHA256 if verify else None,
    )
    keys = ("x_train", "y_train", "x_test", "y_test", "class_names")
    try:
        with np.load(file, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in keys if k in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"{file}: not a readable npz of plain arrays ({error}); expected {list(keys)}"
        ) from error
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ValueError(f"{file}: missing arrays {missing}; expected {list(keys)}")
    for key in ("y_train", "y_test"):
        if not np.issubdtype(arrays[key].dtype, np.integer):
            raise ValueError(f"{file}: {key} must hold integer labels, got {arrays[key].dtype}")
    return ImageDataset(
        x_train=arrays["x_train"],
        y_train=arrays["y_train"].astype(np.int64, copy=False),
        x_test=arrays["x_test"],
        y_test=arrays["y_test"].astype(np.int64, copy=False),
        class_names=[str(n) for n in arrays["class_names"].tolist()],
    )


def load_dataset(name: str, path: PathLike | None = None, *, verify: bool = True) -> ImageDataset:
    """Load a dataset by name: ``"cifar10"``, ``"cifar100"`` (fine labels) or ``"cifar10-subset"``."""
    loaders: dict[str, Callable[..., ImageDataset]] = {
        "cifar10": load_cifar10,
        "cifar100": load_cifar100,
        "cifar10-subset": load_cifar10_subset,
    }
    if name not in loaders:
        raise ValueError(f"load_dataset: unknown dataset name {name!r}; choose one of {DATASETS}")
    return loaders[name](path, verify=verify)


# --------------------------------------------------------------------------- tensors and batches


def _check_images(x: np.ndarray, where: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(
            f"{where}: x must be uint8 images [N, H, W, 3] (channel-last, as loaded), got "
            f"{x.dtype} {list(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{where}: x holds no images")
    return x


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of ``uint8 [N, H, W, 3]`` images, on the [0, 1] scale.

    Compute them on the training images only and reuse them for the test images. Sums are
    accumulated exactly in integers, chunk by chunk, so large datasets need no float copy.
    """
    x = _check_images(x, "channel_stats")
    total = np.zeros(3, dtype=np.int64)
    squares = np.zeros(3, dtype=np.int64)
    for start in range(0, x.shape[0], 2048):
        pixels = x[start : start + 2048].reshape(-1, 3).astype(np.int64)
        total += pixels.sum(axis=0)
        squares += (pixels * pixels).sum(axis=0)
    count = x.shape[0] * x.shape[1] * x.shape[2]
    mean = total / count
    var = np.maximum(squares / count - mean * mean, 0.0)
    return mean / 255.0, np.sqrt(var) / 255.0


def to_tensor(x: np.ndarray, mean: np.ndarray | Tensor, std: np.ndarray | Tensor) -> Tensor:
    """Normalise ``uint8 [N, H, W, 3]`` images to ``float32 [N, 3, H, W]``: ``(x / 255 - mean) / std``."""
    x = _check_images(x, "to_tensor")
    mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float32)).reshape(-1)
    std_t = torch.as_tensor(np.asarray(std, dtype=np.float32)).reshape(-1)
    if mean_t.shape != (3,) or std_t.shape != (3,):
        raise ValueError(
            f"to_tensor: mean and std need one value per channel (3), got shapes "
            f"{list(mean_t.shape)} and {list(std_t.shape)}; use channel_stats(x_train)"
        )
    if not bool(torch.all(std_t > 0)):
        raise ValueError(f"to_tensor: std must be positive, got {std_t.tolist()}")
    n, h, w, _ = x.shape
    out = torch.empty((n, 3, h, w), dtype=torch.float32)
    out.copy_(torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2))
    scale = (1.0 / (255.0 * std_t)).view(1, 3, 1, 1)
    shift = (mean_t / std_t).view(1, 3, 1, 1)
    return out.mul_(scale).sub_(shift)


def make_batches(
    x: Tensor,
    y: Tensor | np.ndarray,
    batch_size: int | None,
    shuffle: bool = True,
    augment: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
    drop_last: bool = False,
    *,
    device: torch.device | str | None = None,
) -> Batches:
    """Mini-batches ``{"x": float [B, 3, H, W], "y": int64 [B], "index": int64 [B]}``.

    ``x`` is the output of :func:`to_tensor`; ``index`` holds the sample ids (rows of ``x``)
    that pointwise constraints use. ``augment`` (e.g. :class:`~eclearn.vision.augment.Augment`)
    runs on every batch through :class:`~eclearn.batches.Batches`' ``transform`` hook.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim != 4:
        raise ValueError(
            "make_batches: x must be a float tensor [N, 3, H, W]; convert uint8 images with "
            f"to_tensor(x, *channel_stats(x_train)) first (got {type(x).__name__} "
            f"{getattr(x, 'dtype', '')} {list(getattr(x, 'shape', []))})"
        )
    labels = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.ndim != 1:
        raise ValueError(
            f"make_batches: y must be integer labels [N], got {labels.dtype} {list(labels.shape)}"
        )
    if labels.shape[0] != x.shape[0]:
        raise ValueError(
            f"make_batches: x has {x.shape[0]} images but y has {labels.shape[0]} labels"
        )
    return Batches(
        {"x": x, "y": labels.to(torch.int64)},
        batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        transform=augment,
        device=device,
    )
