"""Train/val (and test) split: stratified by label, grouped by source, so no source is in two splits."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from cache.schema import LABEL_NAMES, SPLIT_CODES
from ingest.discover import NO_SPLIT, UsageError

TRAIN, VAL, TEST = SPLIT_CODES["train"], SPLIT_CODES["val"], SPLIT_CODES["test"]


def assign_splits(table: pd.DataFrame, val_fraction: float, seed: int, test_fraction: float = 0.0) -> pd.DataFrame:
    """Fill in the split of every row that has none; deterministic for a given seed.

    With `test_fraction`, that share of those rows goes to test first, by whole sources, as val does next.
    The val fold is one of round(1 / val_fraction) folds of scikit-learn's StratifiedGroupKFold (fewer for
    small sets): the first fold in which both splits hold both classes; where none does, a few whole sources.
    A table that is all test (an unseen set, for evaluation) stays so.
    """
    if not 0 < val_fraction < 1:
        raise UsageError(f"--val-fraction must lie between 0 and 1, not {val_fraction}")
    table = table.copy()
    free = (table["split"] == NO_SPLIT).to_numpy()
    if test_fraction and free.any():
        kept = _split_free(table[free], test_fraction, seed)
        table.loc[free, "split"] = np.where(kept == VAL, TEST, NO_SPLIT)
    if (table["split"] == TEST).all():
        return table
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
            held = " and ".join(LABEL_NAMES[label] for label in sorted(labels)) or "no"
            raise UsageError(
                f"the {name} split would hold {held} videos only: train and val each need both classes, from "
                f"sources of their own ({_source_counts(table[table['split'] != TEST])}); add videos of another "
                "source, or give the splits in a --manifest"
            )
    return table


def _source_counts(table: pd.DataFrame) -> str:
    counts = table.groupby("label")["group"].nunique()
    return ", ".join(f"{LABEL_NAMES[label]} videos from {n} source{'s' * (n != 1)}" for label, n in counts.items())


def _split_free(free: pd.DataFrame, val_fraction: float, seed: int) -> np.ndarray:
    labels = free["label"].to_numpy()
    groups = free["group"].to_numpy()
    if len(np.unique(groups)) < 2:
        raise UsageError("the train/val videos come from a single source: they cannot be split by source")
    # StratifiedGroupKFold refuses more folds than the largest class has videos: small sets get fewer folds.
    folds = min(max(2, round(1 / val_fraction)), len(np.unique(groups)), int(np.bincount(labels).max()))
    for val in _fold_vals(labels, groups, folds, seed):
        in_val = np.zeros(len(free), bool)
        in_val[val] = True
        if _both_sides_hold_both(labels, in_val):
            return np.where(in_val, VAL, TRAIN).astype(np.int8)
    return np.where(_pick_val_sources(labels, groups, seed), VAL, TRAIN).astype(np.int8)


def _fold_vals(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    if folds < 2:
        return []
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # scikit-learn warns of thin classes; the caller's check decides
        warnings.simplefilter("ignore", UserWarning)
        return [val for _, val in splitter.split(np.zeros(len(labels)), labels, groups)]


def _both_sides_hold_both(labels: np.ndarray, in_val: np.ndarray) -> bool:
    return set(labels[in_val]) == {0, 1} and set(labels[~in_val]) == {0, 1}


def _pick_val_sources(labels: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
    """Val as a few whole sources, taken in a seeded order while they add a class val lacks and leave train
    both: where no fold works (a few sources, some holding both classes), this still finds a split whenever
    each class has two sources. Where none exists, `assign_splits` says which split lacks what."""
    in_val = np.zeros(len(labels), bool)
    for group in np.random.default_rng(seed).permutation(np.unique(groups)):
        members = groups == group
        adds = set(labels[members]) - set(labels[in_val])
        if adds and set(labels[~in_val & ~members]) == {0, 1}:
            in_val |= members
        if _both_sides_hold_both(labels, in_val):
            break
    return in_val
