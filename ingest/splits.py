"""Train/val split: stratified by label, grouped by source, so no source is in both."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from cache.schema import SPLIT_CODES
from ingest.discover import NO_SPLIT, UsageError

TRAIN, VAL, TEST = SPLIT_CODES["train"], SPLIT_CODES["val"], SPLIT_CODES["test"]


def assign_splits(table: pd.DataFrame, val_fraction: float, seed: int) -> pd.DataFrame:
    """Fill in the split of every row that has none; deterministic for a given seed.

    The val fold is one of round(1 / val_fraction) folds of scikit-learn's StratifiedGroupKFold: the
    first fold in which both splits hold both classes.
    """
    if not 0 < val_fraction < 1:
        raise UsageError(f"--val-fraction must lie between 0 and 1, not {val_fraction}")
    table = table.copy()
    free = (table["split"] == NO_SPLIT).to_numpy()
    labelled = table.loc[table["split"] != TEST, "label"]
    if (labelled < 0).any():
        raise UsageError("videos outside the test split need a label (0 real, 1 fake)")
    if labelled.nunique() < 2:
        raise UsageError("the train/val videos hold one class only: both real and fake videos are needed")
    if free.any():
        table.loc[free, "split"] = _split_free(table[free], val_fraction, seed)
    for name in ("train", "val"):
        labels = set(table.loc[table["split"] == SPLIT_CODES[name], "label"])
        if labels != {0, 1}:
            raise UsageError(
                f"the {name} split would hold {sorted(labels) or 'no videos'}: both classes are needed; "
                "add videos or sources of the missing class, or change --val-fraction"
            )
    return table


def _split_free(free: pd.DataFrame, val_fraction: float, seed: int) -> np.ndarray:
    labels = free["label"].to_numpy()
    groups = free["group"].to_numpy()
    folds = max(2, round(1 / val_fraction))
    folds = min(folds, len(np.unique(groups)))
    if folds < 2:
        raise UsageError("the train/val videos come from a single source: they cannot be split by source")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    split = np.full(len(free), TRAIN, dtype=np.int8)
    with warnings.catch_warnings():  # scikit-learn warns of thin classes; the check below decides
        warnings.simplefilter("ignore", UserWarning)
        folds = list(splitter.split(np.zeros(len(free)), labels, groups))
    for _, val in folds:
        in_val = np.zeros(len(free), bool)
        in_val[val] = True
        if set(labels[in_val]) == {0, 1} and set(labels[~in_val]) == {0, 1}:
            split[in_val] = VAL
            return split
    split[folds[0][1]] = VAL
    return split
