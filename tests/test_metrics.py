"""Video- and frame-level metrics against small hand-checked cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from train.metrics import SELECT_BY, better, choose_threshold, evaluate, frame_roc_auc, video_metrics


def test_perfect_classifier():
    m = evaluate([0, 0, 1, 1, 1], [0.1, 0.4, 0.6, 0.8, 0.9])
    assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0
    assert m["roc_auc"] == 1.0 and m["average_precision"] == 1.0 and m["eer"] == 0.0
    assert m["acc_real"] == 1.0 and m["acc_fake"] == 1.0
    assert m["confusion"] == [[2, 0], [0, 3]]
    assert (m["n"], m["n_real"], m["n_fake"], m["threshold"]) == (5, 2, 3, 0.5)
    assert m["majority_baseline"] == pytest.approx(0.6)
    json.dumps(m)


def test_inverted_classifier():
    m = evaluate([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1])
    assert m["accuracy"] == 0.0 and m["roc_auc"] == 0.0 and m["eer"] == 1.0
    assert m["confusion"] == [[0, 2], [2, 0]]


def test_always_fake():
    labels = [0, 1, 1, 1]
    m = evaluate(labels, [0.9] * 4)
    assert m["accuracy"] == 0.75
    assert m["balanced_accuracy"] == 0.5
    assert m["majority_baseline"] == m["accuracy"]
    assert m["acc_real"] == 0.0 and m["acc_fake"] == 1.0
    assert m["roc_auc"] == 0.5 and m["eer"] == 0.5
    assert m["confusion"] == [[0, 1], [0, 3]]


def test_hand_checked_mixed_case():
    # Scores ranked: f(0.9) r(0.7) f(0.6) r(0.4) f(0.3) r(0.2): 6 of the 9 fake-real pairs are ordered right.
    labels = [1, 0, 1, 0, 1, 0]
    probs = [0.9, 0.7, 0.6, 0.4, 0.3, 0.2]
    m = evaluate(labels, probs)
    assert m["roc_auc"] == pytest.approx(6 / 9)
    # Precision at each fake: 1/1, 2/3, 3/5.
    assert m["average_precision"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # At 0.5: fakes 0.9 and 0.6 caught, real 0.7 wrongly flagged.
    assert m["confusion"] == [[2, 1], [1, 2]]
    assert m["acc_real"] == pytest.approx(2 / 3) and m["acc_fake"] == pytest.approx(2 / 3)
    # ROC points (FPR, FNR): (0, 2/3) (1/3, 2/3) (1/3, 1/3) (2/3, 1/3) ...: FPR == FNR == 1/3 at a vertex.
    assert m["eer"] == pytest.approx(1 / 3)


def test_eer_is_interpolated_between_roc_points():
    # ROC points (FPR, FNR): (0, 1) (0, 1/2) (1, 1/2) (1, 0): the gap changes sign on the flat segment
    # from (0, 1/2) to (1, 1/2), crossing at FPR == FNR == 1/2.
    m = evaluate([1, 0, 1], [0.9, 0.5, 0.1])
    assert m["eer"] == pytest.approx(0.5)
    # (0, 1) (0, 2/3) (1/2, 2/3) (1/2, 0) (1, 0): the segment from (0, 2/3) to (1/2, 2/3) meets FPR == FNR
    # only past its end, so the crossing is on the vertical step at FPR 1/2: EER 1/2.
    m = evaluate([1, 0, 1, 1, 0], [0.9, 0.8, 0.7, 0.6, 0.1])
    assert m["eer"] == pytest.approx(0.5)


def test_threshold_changes_calls():
    labels, probs = [0, 0, 1, 1], [0.1, 0.3, 0.35, 0.9]
    assert evaluate(labels, probs)["accuracy"] == 0.75
    m = evaluate(labels, probs, threshold=0.32)
    assert m["accuracy"] == 1.0 and m["threshold"] == 0.32
    assert m["roc_auc"] == evaluate(labels, probs)["roc_auc"]


def test_one_class_gives_none_not_nan():
    m = evaluate([1, 1, 1], [0.2, 0.7, 0.9])
    assert m["roc_auc"] is None and m["average_precision"] is None and m["eer"] is None
    assert m["acc_real"] is None and m["acc_fake"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(2 / 3) and m["majority_baseline"] == 1.0
    assert m["confusion"] == [[0, 0], [1, 2]]
    text = json.dumps(m, allow_nan=False)
    assert "NaN" not in text


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="labels but"):
        evaluate([0, 1], [0.5])
    with pytest.raises(ValueError, match="no labels"):
        evaluate([], [])
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
        evaluate([0, -1], [0.5, 0.5])


def test_choose_threshold_maximises_balanced_accuracy():
    labels = [0, 0, 0, 0, 1, 1]
    probs = [0.05, 0.1, 0.2, 0.3, 0.35, 0.4]
    threshold = choose_threshold(labels, probs)
    assert threshold == pytest.approx(0.325)  # halfway between the last real and the first fake
    assert evaluate(labels, probs, threshold)["balanced_accuracy"] == 1.0
    assert evaluate(labels, probs)["balanced_accuracy"] == 0.5


def test_choose_threshold_with_overlap():
    # Calling 0.6 and above fake (TPR 3/4, FPR 0) ties with 0.4 and above (TPR 1, FPR 1/4) at balanced accuracy
    # 7/8; the higher threshold wins and the result sits between 0.6 and the real at 0.5.
    labels = [0, 0, 0, 1, 0, 1, 1, 1]
    probs = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    threshold = choose_threshold(labels, probs)
    assert threshold == pytest.approx(0.55)
    assert evaluate(labels, probs, threshold)["balanced_accuracy"] == pytest.approx(0.875)
    best = max(evaluate(labels, probs, t)["balanced_accuracy"] for t in [p + 1e-9 for p in probs] + [0.0])
    assert best == pytest.approx(0.875)


def test_choose_threshold_lowest_score_and_one_class():
    # An inverted classifier: no split beats calling every video fake, so the threshold is the lowest score.
    assert choose_threshold([1, 1, 0], [0.2, 0.3, 0.9]) == pytest.approx(0.2)
    with pytest.warns(UserWarning, match="one class"):
        assert choose_threshold([0, 0], [0.2, 0.3], default=0.4) == 0.4


def test_better():
    assert set(SELECT_BY) == {"roc_auc", "balanced_accuracy", "average_precision", "accuracy"}
    for name in SELECT_BY:
        assert better(name, 0.8, 0.7) and not better(name, 0.7, 0.8) and not better(name, 0.7, 0.7)
        assert better(name, 0.1, None) and not better(name, None, 0.1) and not better(name, None, None)
        assert better(name, 0.1, math.nan) and not better(name, math.nan, 0.1)
    with pytest.raises(ValueError, match="cannot select"):
        better("eer", 0.1, 0.2)


def test_frame_auc_ranks_every_frame_alone_where_the_video_auc_ranks_clip_means():
    # A real clip's frames score 0.1 and 0.6, a fake one's 0.4 and 0.9: 3 of the 4 (fake, real) frame pairs are
    # ranked right, while the clips' means, 0.35 and 0.65, are.
    frames = np.array([[0.1, 0.6], [0.4, 0.9]])
    assert frame_roc_auc([0, 1], frames) == 0.75
    metrics = video_metrics(np.array([3, 5]), np.array([0, 1]), frames.mean(axis=1), frames)
    assert metrics["roc_auc"] == 1.0 and metrics["clip_roc_auc"] == 1.0 and metrics["frame_roc_auc"] == 0.75
    assert frame_roc_auc([1, 1], frames) is None
