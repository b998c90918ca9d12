"""CIFAR loaders on synthetic archives, normalisation, batches and augmentation."""

from __future__ import annotations

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from eclearn.batches import Batches
from eclearn.datafiles import DataNotFoundError
from eclearn.vision import (
    Augment,
    ImageDataset,
    channel_stats,
    load_cifar10,
    load_cifar10_subset,
    load_cifar100,
    load_dataset,
    make_batches,
    padded_crop,
    random_crop,
    random_flip,
    random_rotation,
    to_tensor,
)

from .conftest import (
    Synthetic,
    make_synthetic_cifar100,
    py2_pickle,
    write_cifar10_binary,
    write_cifar10_python,
    write_cifar100,
    write_subset_npz,
)


def assert_same(ds: ImageDataset, data: Synthetic) -> None:
    assert ds.x_train.dtype == np.uint8 and ds.x_train.shape == data.x_train.shape
    assert ds.x_test.shape == data.x_test.shape and ds.x_train.flags.c_contiguous
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    np.testing.assert_array_equal(ds.x_train, data.x_train)
    np.testing.assert_array_equal(ds.y_train, data.y_train)
    np.testing.assert_array_equal(ds.x_test, data.x_test)
    np.testing.assert_array_equal(ds.y_test, data.y_test)
    assert ds.class_names == data.class_names
    assert ds.num_classes == len(data.class_names)


# --------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("archive", [True, False], ids=["tar.gz", "folder"])
@pytest.mark.parametrize("writer", [write_cifar10_python, write_cifar10_binary])
def test_cifar10_formats_roundtrip(tmp_path, synthetic, writer, archive, no_data_env):
    source = writer(synthetic, tmp_path, archive=archive)
    assert_same(load_cifar10(source, verify=False), synthetic)


def test_cifar10_found_under_data_root_and_env(tmp_path, synthetic, monkeypatch):
    write_cifar10_python(synthetic, tmp_path / "cifar10")
    assert_same(load_cifar10(tmp_path, verify=False), synthetic)
    monkeypatch.setenv("ECLEARN_DATA", str(tmp_path))
    assert_same(load_cifar10(verify=False), synthetic)
    assert_same(load_dataset("cifar10", verify=False), synthetic)


def test_tar_members_are_not_extracted(tmp_path, synthetic, no_data_env):
    source = write_cifar10_python(synthetic, tmp_path)
    load_cifar10(source, verify=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-python.tar.gz"]


def test_missing_cifar10_says_where_to_get_it(tmp_path, no_data_env):
    for path in (None, tmp_path):
        with pytest.raises(DataNotFoundError) as info:
            load_cifar10(path)
        message = str(info.value)
        for hint in ("cifar-10-python.tar.gz", "cifar-10-binary.tar.gz", "cs.toronto.edu"):
            assert hint in message
        assert "ECLEARN_DATA" in message and "University of Toronto" in message
    with pytest.raises(DataNotFoundError, match=r"cifar-100-python\.tar\.gz"):
        load_cifar100(tmp_path)


def test_verify_rejects_unofficial_archive(tmp_path, synthetic, no_data_env):
    source = write_cifar10_python(synthetic, tmp_path)
    with pytest.raises(DataNotFoundError, match=r"md5 .* verify=False"):
        load_cifar10(source)
    folder = write_cifar10_python(synthetic, tmp_path / "extracted", archive=False)
    with pytest.raises(DataNotFoundError, match="data_batch_1 is not the official file"):
        load_cifar10(folder)


def test_incomplete_archive_lists_missing_members(tmp_path, no_data_env):
    target = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(DataNotFoundError, match="test_batch"):
        load_cifar10(target, verify=False)
    (tmp_path / "not-a-tar.tar.gz").write_bytes(b"plain bytes")
    with pytest.raises(DataNotFoundError, match="not a readable tar archive"):
        load_cifar10(tmp_path / "not-a-tar.tar.gz", verify=False)


def test_disallowed_pickle_global_is_refused(tmp_path, synthetic, no_data_env):
    folder = write_cifar10_python(synthetic, tmp_path, archive=False)
    (folder / "data_batch_2").write_bytes(pickle.dumps({"data": os.getcwd, "labels": []}))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle the global \S*getcwd"):
        load_cifar10(folder, verify=False)


def test_corrupt_batches_are_reported(tmp_path, synthetic, no_data_env):
    folder = write_cifar10_binary(synthetic, tmp_path, archive=False)
    (folder / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="whole number of 3073-byte records"):
        load_cifar10(folder, verify=False)
    folder = write_cifar10_python(synthetic, tmp_path / "py", archive=False)
    bad = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}
    (folder / "test_batch").write_bytes(py2_pickle(bad))
    with pytest.raises(ValueError, match=r"labels outside \[0, 10\)"):
        load_cifar10(folder, verify=False)


# --------------------------------------------------------------------------- CIFAR-100


@pytest.mark.parametrize("archive", [True, False], ids=["tar.gz", "folder"])
def test_cifar100_fine_and_coarse(tmp_path, archive, no_data_env):
    data = make_synthetic_cifar100()
    source = write_cifar100(data, tmp_path, archive=archive)
    assert_same(load_cifar100(source, verify=False), data)
    coarse = load_cifar100(source, label="coarse", verify=False)
    np.testing.assert_array_equal(coarse.y_train, data.y_train_coarse)
    np.testing.assert_array_equal(coarse.y_test, data.y_test_coarse)
    assert coarse.class_names == data.coarse_names
    assert load_dataset("cifar100", tmp_path, verify=False).num_classes == 100
    with pytest.raises(ValueError, match="'fine' or 'coarse'"):
        load_cifar100(source, label="medium")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the shared subset


def test_subset_npz_synthetic(tmp_path, synthetic, no_data_env):
    write_subset_npz(synthetic, tmp_path / "cifar10" / "cifar10-subset.npz")
    assert_same(load_cifar10_subset(tmp_path, verify=False), synthetic)
    assert_same(load_dataset("cifar10-subset", tmp_path, verify=False), synthetic)
    with pytest.raises(DataNotFoundError, match="sha256 mismatch"):
        load_cifar10_subset(tmp_path)


def test_subset_npz_rejects_pickled_and_incomplete_files(tmp_path, synthetic, no_data_env):
    path = tmp_path / "objects.npz"
    np.savez(path, x_train=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="not a readable npz"):
        load_cifar10_subset(path, verify=False)
    path = tmp_path / "partial.npz"
    np.savez(path, x_train=synthetic.x_train)
    with pytest.raises(ValueError, match=r"missing arrays \['y_train'"):
        load_cifar10_subset(path, verify=False)
    with pytest.raises(DataNotFoundError, match=r"cifar10/cifar10-subset\.npz"):
        load_cifar10_subset(tmp_path / "nowhere")


def test_real_subset(subset_path):
    ds = load_cifar10_subset(subset_path)
    assert ds.x_train.shape == (10000, 32, 32, 3) and ds.x_test.shape == (5000, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert np.bincount(ds.y_train).tolist() == [1000] * 10
    assert np.bincount(ds.y_test).tolist() == [500] * 10
    assert ds.class_names[0] == "airplane" and ds.class_names[-1] == "truck"
    mean, std = channel_stats(ds.x_train)
    assert np.all((mean > 0.4) & (mean < 0.55)) and np.all((std > 0.2) & (std < 0.3))


def test_load_dataset_unknown_name():
    with pytest.raises(ValueError, match=r"unknown dataset name 'mnist'; choose one of"):
        load_dataset("mnist")


def test_image_dataset_validates():
    x = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="channel-last"):
        ImageDataset(
            x.transpose(0, 3, 1, 2), np.zeros(2, np.int64), x, np.zeros(2, np.int64), ["a"]
        )
    with pytest.raises(ValueError, match="y_test has labels outside"):
        ImageDataset(x, np.zeros(2, np.int64), x, np.ones(2, np.int64), ["a"])


# --------------------------------------------------------------------------- tensors and batches


def test_channel_stats_and_normalisation(synthetic):
    x = synthetic.x_train
    mean, std = channel_stats(x)
    pixels = x.reshape(-1, 3).astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, pixels.std(0), rtol=1e-10)
    t = to_tensor(x, mean, std)
    assert t.dtype == torch.float32 and t.shape == (30, 3, 32, 32) and t.is_contiguous()
    torch.testing.assert_close(t.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        t.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-5, rtol=0
    )
    expected = (x[3, 5, 7, 2] / 255.0 - mean[2]) / std[2]
    assert float(t[3, 2, 5, 7]) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="channel-last"):
        to_tensor(x.transpose(0, 3, 1, 2), mean, std)
    with pytest.raises(ValueError, match="one value per channel"):
        to_tensor(x, mean[:2], std)


def test_make_batches_serves_every_sample_once(synthetic):
    x = to_tensor(synthetic.x_train, *channel_stats(synthetic.x_train))
    batches = make_batches(x, synthetic.y_train, batch_size=8)
    assert isinstance(batches, Batches) and len(batches) == 4
    seen = []
    for batch in batches:
        assert set(batch) == {"x", "y", "index"}
        assert batch["x"].dtype == torch.float32 and batch["x"].shape[1:] == (3, 32, 32)
        assert batch["y"].dtype == torch.int64 and batch["index"].dtype == torch.int64
        torch.testing.assert_close(batch["x"], x[batch["index"]])
        seen.append(batch["index"])
    assert sorted(torch.cat(seen).tolist()) == list(range(30))
    assert len(make_batches(x, synthetic.y_train, 8, drop_last=True)) == 3


def test_make_batches_augments_through_transform(synthetic):
    x = to_tensor(synthetic.x_train, *channel_stats(synthetic.x_train))
    batches = make_batches(x, synthetic.y_train, 16, shuffle=False, augment=Augment())
    batch = next(iter(batches))
    assert batch["x"].shape == (16, 3, 32, 32) and not torch.equal(batch["x"], x[:16])
    torch.testing.assert_close(batch["y"], torch.as_tensor(synthetic.y_train[:16]))


def test_make_batches_validates(synthetic):
    with pytest.raises(ValueError, match="to_tensor"):
        make_batches(synthetic.x_train, synthetic.y_train, 8)  # type: ignore[arg-type]
    x = torch.zeros(30, 3, 32, 32)
    with pytest.raises(ValueError, match="30 images but y has 29 labels"):
        make_batches(x, synthetic.y_train[:29], 8)
    with pytest.raises(ValueError, match="integer labels"):
        make_batches(x, synthetic.y_train.astype(float), 8)


# --------------------------------------------------------------------------- augmentation


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_flip_is_an_involution(images):
    flipped = random_flip(images, p=1.0)
    torch.testing.assert_close(flipped, images.flip(-1), rtol=0, atol=0)
    torch.testing.assert_close(random_flip(flipped, p=1.0), images, rtol=0, atol=0)
    torch.testing.assert_close(random_flip(images, p=0.0), images, rtol=0, atol=0)


def test_crop_offsets(images):
    b = images.shape[0]
    centre = torch.full((b,), 4)
    torch.testing.assert_close(padded_crop(images, centre, centre, 4), images, rtol=0, atol=0)
    corner = padded_crop(images, torch.zeros(b, dtype=torch.int64), centre, 4, fill=-1.0)
    torch.testing.assert_close(corner[:, :, 4:], images[:, :, :28], rtol=0, atol=0)
    assert bool((corner[:, :, :4] == -1.0).all())
    with pytest.raises(ValueError, match=r"offsets must lie in \[0, 8\]"):
        padded_crop(images, centre + 5, centre, 4)


def test_random_crop_is_a_shifted_window(images):
    torch.manual_seed(3)
    out = random_crop(images, padding=2)
    for i in range(images.shape[0]):
        matches = [
            (t, s)
            for t in range(5)
            for s in range(5)
            if torch.equal(
                out[i : i + 1],
                padded_crop(images[i : i + 1], torch.tensor([t]), torch.tensor([s]), 2),
            )
        ]
        assert matches, f"image {i} is not a padded crop of its input"
    assert torch.equal(random_crop(images, padding=0), images)


def test_rotation(images):
    torch.testing.assert_close(random_rotation(images, 0.0), images, atol=1e-5, rtol=0)
    constant = torch.full((4, 3, 32, 32), 0.7)
    torch.testing.assert_close(
        random_rotation(constant, 15.0, fill=0.7), constant, atol=1e-6, rtol=0
    )
    rotated = random_rotation(images, 15.0)
    assert rotated.shape == images.shape and not torch.allclose(rotated, images)


def test_augment_is_deterministic_under_seed_and_changes_only_x(images):
    augment = Augment(crop_padding=4, flip=True, rotation_degrees=15.0, fill=[0.1, 0.2, 0.3])
    batch = {"x": images, "y": torch.arange(6), "index": torch.arange(6)}
    torch.manual_seed(0)
    first = augment(batch)
    torch.manual_seed(0)
    second = augment(batch)
    torch.testing.assert_close(first["x"], second["x"], rtol=0, atol=0)
    assert first["x"].shape == images.shape and first["y"] is batch["y"]
    assert first["index"] is batch["index"] and batch["x"] is images
    assert not torch.equal(augment(batch)["x"], first["x"])


def test_augment_validates():
    with pytest.raises(ValueError, match="crop_padding"):
        Augment(crop_padding=-1)
    with pytest.raises(ValueError, match="rotation_degrees"):
        Augment(rotation_degrees=200)
    with pytest.raises(KeyError, match="no 'x' entry"):
        Augment()({"y": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"float images \[B, C, H, W\]"):
        Augment().augment(torch.zeros(2, 32, 32, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="one per channel"):
        Augment(fill=[0.0, 1.0]).augment(torch.zeros(2, 3, 32, 32))
