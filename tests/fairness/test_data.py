"""COMPAS loading and preprocessing (skipped when the shared data file is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eclearn.datafiles import DataNotFoundError
from eclearn.fairness import GROUPS, CompasSplit, compas_split, load_compas

# Facts of the ProPublica file after the −30 ≤ days_b_screening_arrest ≤ 30 filter
# (Other = 343 Other + 31 Asian + 11 Native American).
GROUP_SIZES = {"African-American": 3175, "Caucasian": 2103, "Hispanic": 509, "Other": 385}
BLOCKS = {"race": slice(0, 4), "priors": slice(6, 12), "juv_misd": slice(12, 15)}
BLOCKS |= {"juv_other": slice(15, 18), "age": slice(18, 23)}


@pytest.fixture(scope="module")
def split0(compas_path: Path) -> CompasSplit:
    return compas_split(0, compas_path)


def test_filtered_rows_and_groups(compas_path: Path) -> None:
    frame = load_compas(compas_path)
    assert len(frame) == 6172
    assert frame["days_b_screening_arrest"].between(-30, 30).all()
    assert tuple(frame["group"].cat.categories) == GROUPS
    assert frame["group"].value_counts().to_dict() == GROUP_SIZES


def test_load_returns_a_fresh_copy(compas_path: Path) -> None:
    frame = load_compas(compas_path)
    frame["age"] = -1
    assert (load_compas(compas_path)["age"] >= 18).all()


def test_folder_path_and_env_var_find_the_file(
    compas_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_folder = compas_path.parents[1]
    assert len(load_compas(data_folder)) == 6172
    monkeypatch.setenv("ECLEARN_DATA", str(data_folder))
    assert len(load_compas()) == 6172


def test_split_shapes_and_dtypes(split0: CompasSplit) -> None:
    assert split0.x_train.shape == (4320, 23) and split0.x_test.shape == (1852, 23)
    assert split0.x_train.dtype == np.float32 and split0.x_test.dtype == np.float32
    for array in (split0.y_train, split0.y_test, split0.g_train, split0.g_test):
        assert array.dtype == np.int64
    assert len(split0.feature_names) == 23 and len(set(split0.feature_names)) == 23
    assert split0.feature_names[:6] == [
        "race_African-American",
        "race_Caucasian",
        "race_Hispanic",
        "race_Other",
        "sex_Male",
        "c_charge_degree_M",
    ]
    assert split0.groups == GROUPS and split0.seed == 0
    assert set(np.unique(split0.y_train)) == {0, 1}


def test_one_hot_blocks_sum_to_one(split0: CompasSplit) -> None:
    for x, g in ((split0.x_train, split0.g_train), (split0.x_test, split0.g_test)):
        assert set(np.unique(x)) == {0.0, 1.0}
        for name, block in BLOCKS.items():
            np.testing.assert_array_equal(x[:, block].sum(axis=1), 1.0, err_msg=name)
        np.testing.assert_array_equal(x[:, BLOCKS["race"]].argmax(axis=1), g)


def test_features_match_the_raw_columns(compas_path: Path, split0: CompasSplit) -> None:
    rows = load_compas(compas_path).iloc[split0.train_rows]
    x = split0.x_train
    np.testing.assert_array_equal(x[:, 4], (rows["sex"] == "Male").to_numpy())
    np.testing.assert_array_equal(x[:, 5], (rows["c_charge_degree"] == "M").to_numpy())
    priors_bin = np.minimum(rows["priors_count"].to_numpy(), 5)  # bins 0, 1, 2, 3, 4, ≥ 5
    np.testing.assert_array_equal(x[:, BLOCKS["priors"]].argmax(axis=1), priors_bin)
    juv_bin = np.minimum(rows["juv_misd_count"].to_numpy(), 2)  # bins 0, 1, ≥ 2
    np.testing.assert_array_equal(x[:, BLOCKS["juv_misd"]].argmax(axis=1), juv_bin)
    np.testing.assert_array_equal(split0.y_train, rows["two_year_recid"].to_numpy())
    codes = rows["group"].cat.codes.to_numpy()
    np.testing.assert_array_equal(split0.g_train, codes)


def test_age_bins_are_fitted_on_the_training_rows(compas_path: Path, split0: CompasSplit) -> None:
    ages = load_compas(compas_path)["age"].to_numpy()
    quantiles = np.linspace(0, 100, 6)
    train_edges = np.percentile(ages[split0.train_rows], quantiles)
    np.testing.assert_allclose(split0.age_bin_edges, train_edges)
    assert not np.allclose(split0.age_bin_edges, np.percentile(ages, quantiles))
    assert not np.allclose(split0.age_bin_edges, compas_split(3, compas_path).age_bin_edges)
    age_of_train = ages[split0.train_rows]
    expected = np.searchsorted(split0.age_bin_edges[1:-1], age_of_train, side="right")
    np.testing.assert_array_equal(split0.x_train[:, BLOCKS["age"]].argmax(axis=1), expected)


def test_split_is_70_30_disjoint_and_deterministic(compas_path: Path, split0: CompasSplit) -> None:
    rows = np.concatenate([split0.train_rows, split0.test_rows])
    np.testing.assert_array_equal(np.sort(rows), np.arange(6172))
    again = compas_split(0, compas_path)
    for name in ("x_train", "y_train", "g_train", "x_test", "y_test", "g_test", "train_rows"):
        np.testing.assert_array_equal(getattr(again, name), getattr(split0, name), err_msg=name)
    other = compas_split(1, compas_path)
    assert not np.array_equal(other.train_rows, split0.train_rows)


def test_to_tensors(split0: CompasSplit) -> None:
    train, test = split0.to_tensors()
    assert set(train) == set(test) == {"x", "y", "group", "index"}
    assert train["x"].dtype == torch.float32 and train["x"].shape == (4320, 23)
    assert train["y"].dtype == torch.float32 and test["y"].shape == (1852,)
    assert train["group"].dtype == torch.int64 and train["index"].dtype == torch.int64
    assert torch.equal(test["index"], torch.arange(1852))
    assert torch.equal(train["group"], torch.from_numpy(split0.g_train))


def test_bad_arguments(compas_path: Path) -> None:
    with pytest.raises(ValueError, match="seed"):
        compas_split(-1, compas_path)
    with pytest.raises(ValueError, match="test_size"):
        compas_split(0, compas_path, test_size=1.5)


def test_missing_file_says_what_to_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ECLEARN_DATA", raising=False)
    for path in (tmp_path, None):
        with pytest.raises(DataNotFoundError) as caught:
            compas_split(0, path)
        message = str(caught.value)
        assert "compas-analysis" in message and "ECLEARN_DATA" in message
        assert "compas-scores-two-years.csv" in message


def test_wrong_checksum_is_rejected(tmp_path: Path) -> None:
    fake = tmp_path / "compas" / "compas-scores-two-years.csv"
    fake.parent.mkdir()
    fake.write_text("id,race,days_b_screening_arrest,two_year_recid\n1,Other,0,1\n")
    with pytest.raises(DataNotFoundError, match="sha256"):
        load_compas(tmp_path)
    with pytest.raises(DataNotFoundError, match="sha256"):
        compas_split(0, fake)
