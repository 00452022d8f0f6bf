import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oculi.metrics import classification_metrics, metrics_table_rows

CLASSES = ["ant", "bee", "cat", "dog"]  # "dog" never occurs: a zero-support class
Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
PROBS = np.array(
    [
        [0.7, 0.2, 0.1, 0.0],  # 0 -> 0 right
        [0.3, 0.6, 0.1, 0.0],  # 0 -> 1 wrong, true class second
        [0.1, 0.8, 0.1, 0.0],  # 1 -> 1 right
        [0.2, 0.5, 0.3, 0.0],  # 1 -> 1 right
        [0.1, 0.1, 0.8, 0.0],  # 2 -> 2 right
        [0.5, 0.1, 0.0, 0.4],  # 2 -> 0 wrong, true class has probability 0
    ]
)


@pytest.fixture
def metrics():
    return classification_metrics(Y_TRUE, PROBS, CLASSES, top_k=2)


def test_accuracy_and_confusion(metrics):
    assert metrics["n"] == 6
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert metrics["classes"] == CLASSES


def test_per_class_values(metrics):
    per = {c["class"]: c for c in metrics["per_class"]}
    assert [c["class"] for c in metrics["per_class"]] == CLASSES
    assert per["ant"]["precision"] == pytest.approx(1 / 2)
    assert per["ant"]["recall"] == pytest.approx(1 / 2)
    assert per["bee"]["precision"] == pytest.approx(2 / 3)
    assert per["bee"]["recall"] == pytest.approx(1.0)
    assert per["bee"]["f1"] == pytest.approx(0.8)
    assert per["cat"]["precision"] == pytest.approx(1.0)
    assert per["cat"]["recall"] == pytest.approx(1 / 2)
    assert [c["support"] for c in metrics["per_class"]] == [2, 2, 2, 0]


def test_zero_support_class_is_zero_not_nan(metrics):
    dog = metrics["per_class"][3]
    assert dog == {"class": "dog", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_averages(metrics):
    assert metrics["macro_avg"]["precision"] == pytest.approx((1 / 2 + 2 / 3 + 1 + 0) / 4)
    assert metrics["macro_avg"]["recall"] == pytest.approx((1 / 2 + 1 + 1 / 2 + 0) / 4)
    assert metrics["weighted_avg"]["precision"] == pytest.approx((1 + 4 / 3 + 2) / 6)
    assert metrics["weighted_avg"]["recall"] == pytest.approx(4 / 6)


def test_top_k(metrics):
    assert metrics["top_k"] == 2
    assert metrics["top_k_accuracy"] == pytest.approx(5 / 6)


def test_top_k_clamped_to_number_of_classes():
    m = classification_metrics(Y_TRUE, PROBS, CLASSES, top_k=5)
    assert m["top_k"] == 4
    assert m["top_k_accuracy"] == 1.0


def test_log_loss_finite_with_zero_probability(metrics):
    assert math.isfinite(metrics["log_loss"])
    assert metrics["log_loss"] > 0


def test_json_serialisable_plain_python_types(metrics):
    json.loads(json.dumps(metrics))

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        else:
            assert type(x) in (int, float, str), type(x)

    walk(metrics)


def test_shape_mismatch_rejected():
    with pytest.raises(ValueError):
        classification_metrics(Y_TRUE, PROBS[:, :3], CLASSES)


def test_table_rows(metrics):
    rows = metrics_table_rows(metrics)
    assert len(rows) == len(CLASSES) + 2
    assert rows[1] == ("bee", "0.667", "1.000", "0.800", "2")
    assert rows[-2][0] == "macro avg" and rows[-1][0] == "weighted avg"
    assert rows[-1][4] == "6"
    assert all(len(r) == 5 and all(isinstance(v, str) for v in r) for r in rows)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    k=st.integers(2, 7),
    top_k=st.integers(1, 10),
    seed=st.integers(0, 2**32 - 1),
)
def test_properties(n, k, top_k, seed):
    rng = np.random.default_rng(seed)
    # Small integer weights give many ties, the case where top-1 and argmax could disagree.
    weights = rng.integers(0, 3, size=(n, k)).astype(float)
    weights[weights.sum(axis=1) == 0] = 1.0
    probs = weights / weights.sum(axis=1, keepdims=True)
    y = rng.integers(0, k, size=n)
    m = classification_metrics(y, probs, [f"c{i}" for i in range(k)], top_k=top_k)

    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (k, k) and cm.sum() == n
    assert m["accuracy"] == pytest.approx(np.trace(cm) / n)
    assert m["top_k"] == min(top_k, k)
    assert m["accuracy"] <= m["top_k_accuracy"] + 1e-12
    top1 = classification_metrics(y, probs, [f"c{i}" for i in range(k)], top_k=1)
    assert top1["top_k_accuracy"] == pytest.approx(m["accuracy"])
    assert math.isfinite(m["log_loss"])
    json.dumps(m)
