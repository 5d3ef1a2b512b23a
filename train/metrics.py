"""Video-level evaluation of fake probabilities against 0 (real) / 1 (fake) labels.

The numbers come from scikit-learn, so they mean what readers expect. `evaluate` returns plain Python values
ready for JSON: a metric that is undefined for the labels given (ranking metrics with one class present,
per-class accuracy of an absent class) is `None`, not nan, which JSON cannot hold.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    roc_auc_score,
    roc_curve,
)

SELECT_BY = ("roc_auc", "balanced_accuracy", "average_precision", "accuracy")


def as_arrays(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if labels.shape != probs.shape:
        raise ValueError(f"{labels.size} labels but {probs.size} probabilities")
    if labels.size == 0:
        raise ValueError("nothing to evaluate: no labels")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 (real) or 1 (fake), got {sorted(set(labels.tolist()) - {0, 1})}")
    if not np.isfinite(probs).all():
        raise ValueError("probabilities must be finite")
    return labels.astype(np.int64), probs


def equal_error_rate(labels: np.ndarray, probs: np.ndarray) -> float:
    """Where the false positive rate equals the false negative rate, linearly interpolated on the ROC curve."""
    fpr, tpr, _ = roc_curve(labels, probs)
    gap = (1 - tpr) - fpr  # falls from 1 to -1 along the curve
    crossing = int(np.argmax(gap <= 0))
    if gap[crossing] == 0 or crossing == 0:
        return float(fpr[crossing])
    before, after = gap[crossing - 1], gap[crossing]
    share = before / (before - after)
    return float(fpr[crossing - 1] + share * (fpr[crossing] - fpr[crossing - 1]))


def evaluate(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray, threshold: float = 0.5) -> dict:
    """All metrics for one set of videos; a video is called fake when its probability is >= `threshold`."""
    labels, probs = as_arrays(labels, probs)
    preds = (probs >= threshold).astype(np.int64)
    n_real, n_fake = int((labels == 0).sum()), int((labels == 1).sum())
    both = n_real > 0 and n_fake > 0
    with warnings.catch_warnings():
        # With one class present sklearn warns and averages the recall of the class that is there.
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(balanced_accuracy_score(labels, preds))
    return {
        "n": int(labels.size),
        "n_real": n_real,
        "n_fake": n_fake,
        "threshold": float(threshold),
        "accuracy": float(accuracy_score(labels, preds)),
        "balanced_accuracy": balanced,
        "roc_auc": float(roc_auc_score(labels, probs)) if both else None,
        "average_precision": float(average_precision_score(labels, probs)) if both else None,
        "eer": equal_error_rate(labels, probs) if both else None,
        "acc_real": float(accuracy_score(labels[labels == 0], preds[labels == 0])) if n_real else None,
        "acc_fake": float(accuracy_score(labels[labels == 1], preds[labels == 1])) if n_fake else None,
        "confusion": confusion_matrix(labels, preds, labels=[0, 1]).tolist(),
        "majority_baseline": max(n_real, n_fake) / labels.size,
    }


def video_scores(rows: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One label and score per video from the scores of its clips: the mean of its clips' fake probabilities.
    `rows` names each clip's video; the videos come out in the order of their rows."""
    videos, first, which = np.unique(rows, return_index=True, return_inverse=True)
    sums = np.bincount(which, weights=np.asarray(probs, np.float64), minlength=len(videos))
    return np.asarray(labels)[first], sums / np.bincount(which, minlength=len(videos))


def frame_roc_auc(labels: Sequence[int] | np.ndarray, frame_probs: np.ndarray) -> float | None:
    """ROC AUC of every frame scored alone, each taking its clip's label: DeepfakeBench's frame-level AUC, which
    ranks frames, not videos. `frame_probs` is (clips, frames per clip); None with one class present."""
    frame_probs = np.asarray(frame_probs, dtype=np.float64)
    labels, probs = as_arrays(np.repeat(np.asarray(labels), frame_probs.shape[-1]), frame_probs)
    return float(roc_auc_score(labels, probs)) if len(np.unique(labels)) == 2 else None


def video_metrics(
    rows: np.ndarray, labels: np.ndarray, probs: np.ndarray, frame_probs: np.ndarray, threshold: float = 0.5
) -> dict:
    """`evaluate` of the video scores, with the number of clips scored and the clip- and frame-level ROC AUC
    beside them."""
    metrics = evaluate(*video_scores(rows, labels, probs), threshold)
    both = len(np.unique(labels)) == 2
    return {
        **metrics,
        "clips": int(len(rows)),
        "clip_roc_auc": float(roc_auc_score(labels, probs)) if both else None,
        "frame_roc_auc": frame_roc_auc(labels, frame_probs),
    }


def choose_threshold(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray, default: float = 0.5
) -> float:
    """The threshold maximising balanced accuracy on these (validation) videos.

    Balanced accuracy is (TPR + 1 - FPR) / 2, so the best threshold is the ROC point maximising TPR - FPR;
    of equally good points the highest threshold wins. The threshold returned sits halfway between that
    point's score and the next lower one, which gives the same calls here with a margin on both sides.
    With one class present there is nothing to balance: `default` is returned, with a warning.
    """
    labels, probs = as_arrays(labels, probs)
    if len(np.unique(labels)) < 2:
        warnings.warn(f"only one class among the labels; keeping threshold {default}", stacklevel=2)
        return float(default)
    fpr, tpr, thresholds = roc_curve(labels, probs, drop_intermediate=False)
    # thresholds[0] is +inf (call nothing fake); every other entry is a score actually present.
    best = 1 + int(np.argmax((tpr - fpr)[1:]))
    score = float(thresholds[best])
    if best + 1 == len(thresholds):
        return score
    lower = float(thresholds[best + 1])
    middle = (score + lower) / 2
    return middle if lower < middle <= score else score


def better(metric_name: str, new: float | None, old: float | None) -> bool:
    """Whether `new` beats `old` on a model-selection metric; all are higher-is-better, None is worst."""
    if metric_name not in SELECT_BY:
        raise ValueError(f"cannot select by {metric_name!r}; choose one of {', '.join(SELECT_BY)}")
    if new is None or math.isnan(new):
        return False
    if old is None or math.isnan(old):
        return True
    return new > old
