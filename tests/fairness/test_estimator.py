"""FairClassifier: the scikit-learn contract, the constraints it enforces, its errors."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from eclearn.fairness import FairClassifier, SensitiveFeaturesError

torch.set_num_threads(1)

# Checks that call fit(X, y) without sensitive_features: with a constraint, fit refuses
# (see the module docstring of eclearn.fairness.estimator); the same checks pass on the
# unconstrained configuration below, which shares all of the estimator's code but that.
NEEDS_SENSITIVE_FEATURES = (
    "check_classifier_data_not_an_array",
    "check_classifiers_classes",
    "check_classifiers_train",
    "check_decision_proba_consistency",
    "check_dict_unchanged",
    "check_dont_overwrite_parameters",
    "check_dtype_object",
    "check_estimators_dtypes",
    "check_estimators_fit_returns_self",
    "check_estimators_nan_inf",
    "check_estimators_overwrite_params",
    "check_estimators_pickle",
    "check_f_contiguous_array_estimator",
    "check_fit2d_1feature",
    "check_fit2d_predict1d",
    "check_fit_check_is_fitted",
    "check_fit_idempotent",
    "check_fit_score_takes_y",
    "check_methods_sample_order_invariance",
    "check_methods_subset_invariance",
    "check_n_features_in",
    "check_n_features_in_after_fitting",
    "check_non_transformer_estimators_n_iter",
    "check_pipeline_consistency",
    "check_positive_only_tag_during_fit",
    "check_readonly_memmap_input",
    "check_supervised_y_2d",
    "check_sample_weights_pandas_series",
    "check_sample_weights_not_an_array",
    "check_sample_weights_list",
    "check_all_zero_sample_weights_error",
    "check_sample_weights_shape",
    "check_sample_weights_not_overwritten",
    "check_sample_weight_equivalence_on_dense_data",
    "check_classifiers_one_label_sample_weights",
)


def _expected_failures(estimator: FairClassifier) -> dict[str, str]:
    if estimator.constraint is None:
        return {}
    reason = "sklearn's check calls fit(X, y) without sensitive_features, which a constraint needs"
    return dict.fromkeys(NEEDS_SENSITIVE_FEATURES, reason)


@parametrize_with_checks(
    [FairClassifier(constraint=None, max_iter=5), FairClassifier(max_iter=5)],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def synthetic(n: int = 1500, seed: int = 0, groups: int = 3):
    """Continuous features whose mean shifts with the group, so groups differ in base rate."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    x = rng.normal(size=(n, 4)) + np.stack([g * 0.8, -g * 0.3, np.zeros(n), np.zeros(n)], 1)
    logits = 1.5 * x[:, 0] - x[:, 1] + 0.5 * x[:, 2] - 0.8
    y = (rng.random(n) < 1 / (1 + np.exp(-logits))).astype(int)
    labels = np.array(["a", "b", "c", "d"])[g]
    return x, y, labels


def rates(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.array([pred[labels == k].mean() for k in np.unique(labels)])


@pytest.fixture(scope="module")
def data():
    return synthetic()


@pytest.fixture(scope="module")
def fitted(data):
    x, y, a = data
    return FairClassifier(max_iter=400, random_state=0).fit(x, y, sensitive_features=a)


def test_demographic_parity_reduces_disparity(data, fitted):
    x, y, a = data
    plain = FairClassifier(constraint=None).fit(x, y)
    before = np.ptp(rates(plain.predict(x), a))
    after = np.ptp(rates(fitted.predict(x), a))
    assert before > 0.3
    assert after <= 0.02
    assert fitted.train_violation_ <= fitted.selection_tolerance
    assert set(fitted.multipliers_) == {"demographic_parity"}
    assert fitted.multipliers_["demographic_parity"].shape == (3,)


def test_fitted_attributes(data, fitted):
    x = data[0]
    assert list(fitted.classes_) == [0, 1]
    assert list(fitted.groups_) == ["a", "b", "c"]
    assert fitted.n_features_in_ == 4
    assert fitted.coef_.shape == (1, 4) and fitted.intercept_.shape == (1,)
    assert 0 < fitted.n_iter_ <= 400 and 0 <= fitted.selected_iter_ <= fitted.n_iter_
    assert isinstance(fitted.history_, pd.DataFrame) and len(fitted.history_) == fitted.n_iter_
    assert "violation/demographic_parity[0]" in fitted.history_.columns
    proba = fitted.predict_proba(x)
    assert proba.shape == (len(x), 2)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    decision = fitted.decision_function(x)
    np.testing.assert_array_equal(fitted.predict(x), (decision > 0).astype(int))
    np.testing.assert_allclose(decision, x @ fitted.coef_[0] + fitted.intercept_[0])


def test_deterministic_clone_and_pickle(data, fitted):
    x, y, a = data
    again = clone(fitted)
    assert again.get_params() == fitted.get_params()
    assert not hasattr(again, "coef_")
    again.fit(x, y, sensitive_features=a)
    np.testing.assert_array_equal(again.predict(x), fitted.predict(x))
    np.testing.assert_allclose(again.coef_, fitted.coef_)
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.predict_proba(x), fitted.predict_proba(x))


def test_params_round_trip():
    clf = FairClassifier(constraint="prescribed_rate", rate=0.3, max_iter=10)
    params = clf.get_params()
    assert params["rate"] == 0.3 and params["constraint"] == "prescribed_rate"
    clf.set_params(rate=0.4, temperature=4.0)
    assert clf.rate == 0.4 and clf.temperature == 4.0


def test_prescribed_rate_reaches_target(data):
    x, y, a = data
    clf = FairClassifier(
        constraint="prescribed_rate", rate=0.3, learning_rate=0.05, max_iter=800, random_state=0
    )
    clf.fit(x, y, sensitive_features=a)
    np.testing.assert_allclose(rates(clf.predict(x), a), 0.3, atol=0.02)
    assert clf.multipliers_["positive_rate"].shape == (3,)


def test_prescribed_rate_per_group_mapping(data):
    x, y, a = data
    # With the group among the features, group-specific targets cost little accuracy.
    x = np.hstack([x, (a[:, None] == np.array(["a", "b", "c"])).astype(float)])
    target = {"a": 0.2, "b": 0.4, "c": 0.6}
    clf = FairClassifier(constraint="prescribed_rate", rate=target, max_iter=800)
    clf.fit(x, y, sensitive_features=a)
    np.testing.assert_allclose(rates(clf.predict(x), a), [0.2, 0.4, 0.6], atol=0.02)


def test_tolerance_form_and_equalized_odds_run(data):
    x, y, a = data
    loose = FairClassifier(equality=False, tolerance=0.1, max_iter=200)
    loose.fit(x, y, sensitive_features=a)
    r = rates(loose.predict(x), a)
    assert np.abs(r - loose.predict(x).mean()).max() <= 0.1 + 0.01
    eo = FairClassifier(constraint="equalized_odds", max_iter=100).fit(x, y, sensitive_features=a)
    assert set(eo.multipliers_) == {"true_positive_rate_gap", "false_positive_rate_gap"}


def test_pandas_input_and_multi_column_groups(data):
    x, y, a = data
    frame = pd.DataFrame(x, columns=["f0", "f1", "f2", "f3"])
    sensitive = pd.DataFrame({"race": a, "sex": np.where(np.arange(len(a)) % 2, "F", "M")})
    clf = FairClassifier(max_iter=50).fit(frame, pd.Series(y), sensitive_features=sensitive)
    assert list(clf.feature_names_in_) == ["f0", "f1", "f2", "f3"]
    assert len(clf.groups_) == 6 and clf.groups_[0] == ("a", "F")
    assert clf.predict(frame).shape == (len(x),)
    string_labels = np.where(y == 1, "yes", "no")
    clf2 = FairClassifier(max_iter=50).fit(x, string_labels, sensitive_features=list(a))
    assert set(clf2.predict(x)) <= {"no", "yes"} and list(clf2.classes_) == ["no", "yes"]


@pytest.mark.parametrize(
    ("kwargs", "fit_kwargs", "error", "message"),
    [
        ({}, {"sensitive_features": None}, SensitiveFeaturesError, "needs sensitive_features"),
        ({}, {"sensitive_features": "single"}, SensitiveFeaturesError, "single group"),
        ({}, {"sensitive_features": "short"}, SensitiveFeaturesError, "rows but X has"),
        ({}, {"sensitive_features": "nan"}, SensitiveFeaturesError, "missing values"),
        (
            {"constraint": "prescribed_rate", "rate": {"a": 0.3, "b": 0.3, "c": 0.3, "z": 0.3}},
            {},
            SensitiveFeaturesError,
            "no training samples",
        ),
        (
            {"constraint": "prescribed_rate", "rate": {"a": 0.3}},
            {},
            SensitiveFeaturesError,
            "no target for group",
        ),
        ({"constraint": "prescribed_rate"}, {}, ValueError, "needs rate"),
        ({"constraint": "prescribed_rate", "rate": 1.2}, {}, ValueError, r"in \(0, 1\)"),
        ({"equality": False}, {}, ValueError, "needs tolerance"),
        ({"constraint": "parity"}, {}, ValueError, "is unknown"),
        ({"learning_rate": -1.0}, {}, ValueError, "learning_rate must be"),
        ({"constraint": "equalized_odds"}, {"y": "multiclass"}, ValueError, "binary targets"),
        ({}, {"X": "nan"}, ValueError, "NaN"),
    ],
)
def test_errors(data, kwargs, fit_kwargs, error, message):
    x, y, a = data
    x, y = x.copy(), y.copy()
    sensitive = {
        "single": np.full(len(y), "a"),
        "short": a[:-3],
        "nan": np.where(np.arange(len(a)) == 5, None, a),
    }.get(fit_kwargs.get("sensitive_features", "ok"), a)
    if "sensitive_features" in fit_kwargs and fit_kwargs["sensitive_features"] is None:
        sensitive = None
    if fit_kwargs.get("y") == "multiclass":
        y[:10] = 2
    if fit_kwargs.get("X") == "nan":
        x[3, 1] = np.nan
    with pytest.raises(error, match=message):
        FairClassifier(max_iter=5, **kwargs).fit(x, y, sensitive_features=sensitive)


def test_equalized_odds_needs_both_labels_in_every_group(data):
    x, y, a = data
    y = y.copy()
    y[a == "c"] = 0
    with pytest.raises(SensitiveFeaturesError, match=r"no.*positive"):
        FairClassifier(constraint="equalized_odds", max_iter=5).fit(x, y, sensitive_features=a)


def test_unconstrained_needs_no_groups(data):
    x, y, _ = data
    clf = FairClassifier(constraint=None, max_iter=0).fit(x, y)
    assert clf.multipliers_ == {} and clf.n_iter_ == 0
    from sklearn.linear_model import LogisticRegression

    reference = LogisticRegression(C=1e6, max_iter=1000).fit(x, y)
    assert (clf.predict(x) == reference.predict(x)).mean() > 0.99


def test_pipeline_with_metadata_routing(data):
    import sklearn
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, a = data
    with sklearn.config_context(enable_metadata_routing=True):
        clf = FairClassifier(max_iter=300).set_fit_request(sensitive_features=True)
        pipe = make_pipeline(StandardScaler(), clf).fit(x, y, sensitive_features=a)
        assert np.ptp(rates(pipe.predict(x), a)) <= 0.02
