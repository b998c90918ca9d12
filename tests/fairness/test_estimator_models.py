"""FairClassifier beyond logistic regression, and FairRegressor (issue 13): model kinds,
multiclass rates, sample weights, mini-batches with running exact rates, groups, the
convergence warning, determinism, validation, metadata routing through GridSearchCV."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from eclearn.fairness import (
    ClassifierStatistics,
    FairClassifier,
    FairnessConvergenceWarning,
    FairRegressor,
    SensitiveFeaturesError,
    UnseenGroupWarning,
)
from eclearn.fairness._engine import Data, MiniBatches, chunks

torch.set_num_threads(1)


def synthetic(n=1200, seed=0, groups=3, classes=2):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    x = rng.normal(size=(n, 4)) + np.stack([g * 0.8, -g * 0.3, np.zeros(n), np.zeros(n)], 1)
    logits = 1.5 * x[:, 0] - x[:, 1] + 0.5 * x[:, 2] - 0.8
    if classes == 2:
        y = (rng.random(n) < 1 / (1 + np.exp(-logits))).astype(int)
    else:
        y = np.digitize(logits + rng.normal(size=n), np.quantile(logits, [1 / 3, 2 / 3]))
    return x, y, np.array(list("abcdefgh"))[g]


def rates(pred, labels, positive=1):
    return np.array([(pred[labels == k] == positive).mean() for k in np.unique(labels)])


@pytest.fixture(scope="module")
def data():
    return synthetic()


class Small(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize(
    "model",
    [
        "logistic",
        "mlp",
        Small(4),
        lambda d: nn.Sequential(nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, 1)),
    ],
    ids=["logistic", "mlp", "module", "factory"],
)
def test_every_model_kind_meets_demographic_parity(data, model):
    x, y, a = data
    clf = FairClassifier(model=model, hidden_layer_sizes=(8,), max_iter=600, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FairnessConvergenceWarning)
        clf.fit(x, y, sensitive_features=a)
    assert clf.model_ is not model  # a module parameter is copied, never trained in place
    assert np.ptp(rates(clf.predict(x), a)) < 0.1
    np.testing.assert_array_equal(clf.predict(x), clf.predict(x))  # deterministic
    assert clf.predict_proba(x).shape == (len(x), 2)
    if model == "logistic":
        assert clf.validation_size_ == 0 and clf.coef_.shape == (1, 4)
    else:
        assert clf.validation_size_ > 0 and clf.selection_data_ == "validation"


def test_multiclass_statistics_match_hand_computed_rates():
    rng = np.random.default_rng(1)
    n, k, c = 50, 3, 4
    logits = torch.as_tensor(rng.normal(size=(n, c)))
    g = torch.as_tensor(rng.integers(0, k, n))
    w = torch.as_tensor(rng.random(n) + 0.5)
    totals = {
        "weight": float(w.sum()),
        "group_weight": np.bincount(g.numpy(), weights=w.numpy(), minlength=k),
        "label_group_weight": np.zeros((2, k)),
    }
    stats = ClassifierStatistics("dp-equality", k, c, totals)

    class Fixed(nn.Module):
        def forward(self, x):
            return logits

    batch = {"x": torch.zeros(n, 1), "y": torch.zeros(n, dtype=torch.long), "w": w, "group": g}
    out = stats(Fixed(), batch, exact=True)["demographic_parity"]
    value = (out.numerator / out.denominator).reshape(k, c).numpy()
    pred = logits.argmax(1).numpy()
    for group in range(k):
        for cls in range(c):
            m = g.numpy() == group
            wn = w.numpy()
            hand = (wn[m] * (pred[m] == cls)).sum() / wn[m].sum() - (
                wn * (pred == cls)
            ).sum() / wn.sum()
            assert value[group, cls] == pytest.approx(hand, abs=1e-12)


def test_multiclass_fit_reduces_per_class_disparity():
    x, y, a = synthetic(classes=3, n=1500)
    plain = FairClassifier(constraint=None).fit(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FairnessConvergenceWarning)
        fair = FairClassifier(max_iter=800, learning_rate=0.05, dual_learning_rate=0.02)
        fair.fit(x, y, sensitive_features=a)
    assert fair.multipliers_["demographic_parity"].shape == (9,)
    assert fair.predict_proba(x).shape == (len(x), 3)
    for cls in range(3):
        assert np.ptp(rates(fair.predict(x), a, cls)) < np.ptp(rates(plain.predict(x), a, cls))
    assert fair.train_violation_ <= 0.01 and fair.feasible_


def test_sample_weight_equals_repeated_rows(data):
    x, y, a = data
    w = np.ones(len(x))
    w[:200] = 2.0
    xr = np.vstack([x, x[:200]])
    yr, ar = np.concatenate([y, y[:200]]), np.concatenate([a, a[:200]])
    weighted = FairClassifier(max_iter=300).fit(x, y, sensitive_features=a, sample_weight=w)
    repeated = FairClassifier(max_iter=300).fit(xr, yr, sensitive_features=ar)
    np.testing.assert_allclose(weighted.coef_, repeated.coef_, atol=1e-4)


def test_minibatch_running_rates_are_exact_after_a_pass(data):
    x, y, a = data
    codes = np.unique(a, return_inverse=True)[1]
    w = np.ones(len(x))
    totals = {
        "weight": w.sum(),
        "group_weight": np.bincount(codes, minlength=3).astype(float),
        "label_group_weight": np.zeros((2, 3)),
    }
    stats = ClassifierStatistics("dp-equality", 3, 2, totals, running=True, num_rows=len(x))
    d = Data(
        x,
        x.mean(0),
        x.std(0),
        torch.as_tensor(y),
        torch.as_tensor(w),
        torch.as_tensor(codes),
        torch.float32,
    )
    rows = torch.arange(len(x))
    model = nn.Linear(4, 1)
    stats.start_running(model, d, rows)
    with torch.no_grad():
        model.weight.add_(0.3)
    for batch in MiniBatches(d, rows, 100, seed=0):  # one epoch touches every row
        stats(model, batch)
    import eclearn as ecl

    problem = ecl.Problem(stats, [ecl.Equality("demographic_parity", size=3)])
    exact = ecl.evaluate(problem, model, chunks(d, rows, indexed=False, size=500))
    np.testing.assert_allclose(
        stats.sums.numpy(), exact["demographic_parity"].value.numpy(), atol=1e-9
    )


def test_minibatch_fit(data):
    x, y, a = data
    clf = FairClassifier(batch_size=128, max_iter=40, exact_every=50, learning_rate=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FairnessConvergenceWarning)
        clf.fit(x, y, sensitive_features=a)
    assert clf.batch_size_ == 128 and clf.selection_data_ == "training data"
    assert np.ptp(rates(clf.predict(x), a)) < 0.06


def test_convergence_warning_names_worst_group(data):
    x, y, a = data
    clf = FairClassifier(constraint="prescribed_rate", rate=0.97, max_iter=30, patience=None)
    with pytest.warns(FairnessConvergenceWarning, match=r"group '.' .*violation .*Try"):
        clf.fit(x, y, sensitive_features=a)
    assert clf.feasible_ is False and clf.worst_group_ in set(a)
    assert clf.worst_violation_ > clf.selection_tolerance


def test_init_unconstrained_independent_of_random_state(data):
    x, y, a = data
    one = FairClassifier(max_iter=300, random_state=1).fit(x, y, sensitive_features=a)
    two = FairClassifier(max_iter=300, random_state=7).fit(x, y, sensitive_features=a)
    np.testing.assert_array_equal(one.coef_, two.coef_)
    assert one.n_iter_ == two.n_iter_


def test_group_errors_and_unseen_groups(data):
    x, y, a = data
    few = a.astype(object)
    few[:5] = "tiny"
    with pytest.raises(SensitiveFeaturesError, match=r"'tiny' \(5 rows\).*min_group_size=10"):
        FairClassifier(max_iter=5).fit(x, y, sensitive_features=few)
    with pytest.raises(SensitiveFeaturesError, match=r"looks continuous.*pandas\.cut"):
        FairClassifier(max_iter=5).fit(x, y, sensitive_features=x[:, 0])
    inter = np.stack([a, np.where(np.arange(len(a)) % 2, "F", "M")], 1)
    clf = FairClassifier(max_iter=100).fit(x, y, sensitive_features=inter)
    assert len(clf.groups_) == 6
    new = inter.copy()
    new[:20, 1] = "X"
    with pytest.warns(UnseenGroupWarning, match="not in the training data"):
        table = clf.group_rates(x, new)
    assert (~table["seen_in_fit"]).sum() == 3 and table["size"].sum() == len(x)


def test_grid_search_routes_sensitive_features(data):
    import sklearn
    from sklearn.model_selection import GridSearchCV

    x, y, a = data
    with sklearn.config_context(enable_metadata_routing=True):
        clf = FairClassifier(max_iter=100).set_fit_request(sensitive_features=True)
        search = GridSearchCV(clf, {"learning_rate": [0.1, 0.2]}, cv=2)
        search.fit(x, y, sensitive_features=a)
        assert search.best_estimator_.groups_.tolist() == ["a", "b", "c"]


def regression_data(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 4))
    x[:, 0] += g
    y = x @ np.array([1.0, -0.5, 0.3, 0.0]) + (g == 2) * 1.5 * x[:, 1]
    y = y + np.array([0.3, 0.5, 0.8])[g] * rng.normal(size=n)
    return x, y, g


def test_regressor_bounded_group_loss_and_equal_mean():
    x, y, g = regression_data()
    plain = FairRegressor(constraint=None).fit(x, y)
    worst = max(plain.group_loss(x, y, g).values())
    bound = 0.8 * worst
    bgl = FairRegressor(bound=bound, max_iter=1500).fit(x, y, sensitive_features=g)
    assert max(bgl.group_loss(x, y, g).values()) <= bound + bgl.selection_tolerance + 1e-9
    assert bgl.feasible_
    emp = FairRegressor(constraint="equal_mean_prediction").fit(x, y, sensitive_features=g)
    means = [emp.predict(x)[g == k].mean() for k in range(3)]
    assert np.ptp(means) <= 2 * emp.selection_tolerance + 1e-9
    with pytest.raises(ValueError, match="needs bound"):
        FairRegressor().fit(x, y, sensitive_features=g)
