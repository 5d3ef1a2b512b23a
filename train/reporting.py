"""Tables and plots from the trainer's per-model `metrics.json`, and a comparison of the models side by side.

Everything here reads plain dicts (as loaded from JSON) and writes files; nothing needs a display, because
figures are built as `matplotlib.figure.Figure` objects, which render with Agg without touching pyplot's
global state. A metric may be None (undefined, e.g. ROC AUC with one class present): plots leave a gap and
tables an empty cell ("n/a" in markdown), so a missing number never reads as a zero.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

EPOCH_COLUMNS = (
    "epoch",
    "lr",
    "seconds",
    "train_loss",
    "train_accuracy",
    "train_clips",
    "train_unique_clips",
    "clips_per_second",
    "data_wait_fraction",
    "optimizer_steps",
    "grad_norm",
    "val_loss",
)
VAL_METRICS = (
    "n",
    "n_real",
    "n_fake",
    "threshold",
    "accuracy",
    "balanced_accuracy",
    "roc_auc",
    "average_precision",
    "eer",
    "acc_real",
    "acc_fake",
    "majority_baseline",
)
CURVE_METRICS = {"roc_auc": "ROC AUC", "balanced_accuracy": "balanced accuracy", "accuracy": "accuracy"}
# comparison column -> markdown header. A threshold-dependent figure says which threshold: 0.5, or t, the one
# each model chose on val; ROC AUC, AP and EER need none.
COMPARISON_COLUMNS = {
    "model": "model",
    "parameters": "parameters",
    "best_epoch": "best epoch",
    "threshold_chosen_on_val": "t (chosen on val)",
    "train_accuracy": "train acc",
    "val_accuracy_at_0.5": "val acc @0.5",
    "val_balanced_accuracy_at_0.5": "val bal. acc @0.5",
    "val_accuracy_at_t_in_sample": "val acc @t (in-sample)",
    "val_balanced_accuracy_at_t_in_sample": "val bal. acc @t (in-sample)",
    "val_roc_auc": "val ROC AUC",
    "val_frame_roc_auc": "val frame AUC",
    "val_average_precision": "val AP",
    "val_eer": "val EER",
    "val_majority_baseline": "val majority",
    "test_accuracy_at_t": "test acc @t",
    "test_balanced_accuracy_at_t": "test bal. acc @t",
    "test_roc_auc": "test ROC AUC",
    "test_frame_roc_auc": "test frame AUC",
    "clips_per_second": "clips/s",
}
COMPARISON_NOTE = (
    "t: the verdict threshold each model chose on val (where its balanced accuracy is highest), so val figures "
    "at t are in-sample and flatter it; val at 0.5 is its chosen epoch's evaluation, with nothing chosen on it; "
    "test figures use t, chosen without seeing test. ROC AUC, AP and EER need no threshold. Frame AUC ranks every "
    "stored frame scored alone (a 1-frame clip), the other figures each video (the mean of its clips)."
)
INTEGER_COLUMNS = ("parameters", "best_epoch")
DPI = 110


def number(value: float | None) -> float:
    """A metric as a float for plotting: None becomes nan, which matplotlib draws as a gap."""
    return math.nan if value is None else float(value)


def is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def history_frame(history: list[dict]) -> pd.DataFrame:
    """One row per epoch with flat columns: the epoch fields, then val_<metric> for each scalar val metric."""
    rows = []
    for entry in history:
        row = {column: entry.get(column) for column in EPOCH_COLUMNS}
        val = entry.get("val") or {}
        names = [*VAL_METRICS, *(k for k in val if k not in VAL_METRICS)]
        row.update({f"val_{k}": val.get(k) for k in names if not isinstance(val.get(k), list | dict)})
        rows.append(row)
    columns = [*EPOCH_COLUMNS, *(f"val_{k}" for k in VAL_METRICS)]
    frame = pd.DataFrame(rows)
    return frame.reindex(columns=[*columns, *(c for c in frame.columns if c not in columns)])


def write_history_csv(out_dir: Path, history: list[dict]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "history.csv"
    history_frame(history).to_csv(path, index=False)
    return path


def val_baseline(metrics: dict) -> float | None:
    """The validation majority-class accuracy: what always answering the commoner class would score."""
    final_val = (metrics.get("final") or {}).get("val") or {}
    if final_val.get("majority_baseline") is not None:
        return final_val["majority_baseline"]
    for entry in metrics.get("history") or []:
        if (entry.get("val") or {}).get("majority_baseline") is not None:
            return entry["val"]["majority_baseline"]
    return None


def mark_best_epoch(ax: Axes, metrics: dict) -> None:
    best = metrics.get("best_epoch")
    if best is not None:
        label = f"chosen epoch {best}" + (f" (by {metrics['select_by']})" if metrics.get("select_by") else "")
        ax.axvline(best, color="0.4", linestyle=":", linewidth=1.5, label=label)


def epoch_axis(ax: Axes, epochs: Sequence[float]) -> None:
    """Whole-number epoch ticks, with half an epoch of margin so a single epoch still gets an axis."""
    ax.set_xlabel("epoch")
    if len(epochs) and not np.isnan(epochs).all():
        first, last = int(np.nanmin(epochs)), int(np.nanmax(epochs))
        ax.set_xlim(first - 0.5, last + 0.5)
        if last - first < 20:
            ax.set_xticks(range(first, last + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def plot_curves(out_dir: Path, metrics: dict) -> Path:
    """Loss per epoch (train, val) beside the val ranking/accuracy metrics, against the majority baseline."""
    frame = history_frame(metrics.get("history") or [])
    epochs = frame["epoch"].to_numpy(dtype=float)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    loss_ax, metric_ax = fig.subplots(1, 2)
    for column, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
        loss_ax.plot(epochs, frame[column].to_numpy(dtype=float), marker="o", label=label)
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("loss")
    for name, label in CURVE_METRICS.items():
        metric_ax.plot(epochs, frame[f"val_{name}"].to_numpy(dtype=float), marker="o", label=f"val {label}")
    baseline = val_baseline(metrics)
    if baseline is not None:
        metric_ax.axhline(baseline, color="black", linestyle="--", linewidth=1, label=f"majority ({baseline:.3f})")
    metric_ax.set_ylim(-0.02, 1.02)
    metric_ax.set_title("validation")
    for ax in (loss_ax, metric_ax):
        mark_best_epoch(ax, metrics)
        epoch_axis(ax, epochs)
        ax.legend(fontsize="small")
    fig.suptitle(f"{metrics.get('model', '?')}: training curves")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "curves.png"
    fig.savefig(path, dpi=DPI)
    return path


def final_split(metrics: dict) -> tuple[str, dict]:
    """The split whose final metrics to show: test when the run has test metrics, else val."""
    final = metrics.get("final") or {}
    for split in ("test", "val"):
        if final.get(split):
            return split, final[split]
    raise ValueError(f"{metrics.get('model', '?')}: no final test or val metrics to report")


def plot_confusion(out_dir: Path, metrics: dict) -> Path:
    """The final confusion matrix (rows true, columns predicted) with counts and each row's share."""
    split, split_metrics = final_split(metrics)
    counts = np.asarray(split_metrics["confusion"], dtype=np.int64).reshape(2, 2)
    fig = Figure(figsize=(4.6, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1))
    for (row, col), count in np.ndenumerate(counts):
        total = counts[row].sum()
        share = f"\n({count / total:.0%} of row)" if total else ""
        colour = "white" if count > counts.max() / 2 else "black"
        ax.text(col, row, f"{count}{share}", ha="center", va="center", color=colour, fontsize=11)
    ax.set_xticks([0, 1], ["real", "fake"])
    ax.set_yticks([0, 1], ["real", "fake"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = split_metrics.get("threshold", metrics.get("threshold"))
    at = "n/a" if threshold is None else f"{threshold:.3f}"
    ax.set_title(f"{metrics.get('model', '?')}: {split} (n={counts.sum()}), threshold {at}")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "confusion.png"
    fig.savefig(path, dpi=DPI)
    return path


def write_model_report(out_dir: Path, metrics: dict) -> list[Path]:
    return [
        write_history_csv(out_dir, metrics.get("history") or []),
        plot_curves(out_dir, metrics),
        plot_confusion(out_dir, metrics),
    ]


def mean_or_none(values: Sequence[float | None]) -> float | None:
    present = [float(v) for v in values if not is_missing(v)]
    return sum(present) / len(present) if present else None


def comparison_row(metrics: dict) -> dict:
    """One model's line: the chosen epoch's train accuracy and val accuracies at 0.5, final val and test metrics
    (at the threshold chosen on val), mean throughput."""
    history = metrics.get("history") or []
    best = metrics.get("best_epoch")
    chosen = next((e for e in history if e.get("epoch") == best), history[-1] if history else {})
    final = metrics.get("final") or {}
    val, test = final.get("val") or {}, final.get("test") or {}
    at_half = chosen.get("val") or {}  # every epoch's val is scored at 0.5; final val at the threshold it chose
    accuracies = ("accuracy", "balanced_accuracy")
    return {
        "model": metrics.get("model"),
        "parameters": metrics.get("parameters"),
        "best_epoch": best,
        "threshold_chosen_on_val": metrics.get("threshold", val.get("threshold")),
        "train_accuracy": chosen.get("train_accuracy"),
        **{f"val_{k}_at_0.5": at_half.get(k) for k in accuracies},
        **{f"val_{k}_at_t_in_sample": val.get(k) for k in accuracies},
        **{
            f"val_{k}": val.get(k)
            for k in ("roc_auc", "frame_roc_auc", "average_precision", "eer", "majority_baseline")
        },
        **{f"test_{k}_at_t": test.get(k) for k in accuracies},
        **{f"test_{k}": test.get(k) for k in ("roc_auc", "frame_roc_auc")},
        "clips_per_second": mean_or_none([e.get("clips_per_second") for e in history]),
    }


def comparison_frame(results: list[dict]) -> pd.DataFrame:
    """One row per model; integer columns stay integers (nullable) so a missing one doesn't turn them float."""
    frame = pd.DataFrame([comparison_row(m) for m in results], columns=list(COMPARISON_COLUMNS))
    for column in INTEGER_COLUMNS:
        frame[column] = frame[column].astype("Int64")
    return frame


def cell(value: object) -> str:
    if is_missing(value):
        return "n/a"
    if isinstance(value, bool | str):
        return str(value).replace("|", "\\|")
    if isinstance(value, int | np.integer):
        return str(int(value))
    return f"{float(value):.3f}"


def format_comparison(results: list[dict]) -> str:
    """The comparison as a markdown table, numbers to 3 decimals, a missing metric as "n/a"; then a line on
    which split and threshold each figure comes from."""
    rows = [comparison_row(m) for m in results]
    lines = [
        "| " + " | ".join(COMPARISON_COLUMNS.values()) + " |",
        "|" + "|".join(":---" if c == "model" else "---:" for c in COMPARISON_COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(cell(row[c]) for c in COMPARISON_COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + f"\n\n{COMPARISON_NOTE}"


def baseline_sentence(results: list[dict]) -> str:
    """What always answering the majority class scores on val, so accuracies can be read against it."""
    baselines = {}
    for metrics in results:
        val = (metrics.get("final") or {}).get("val") or {}
        if val.get("majority_baseline") is not None:
            majority = "fake" if val.get("n_fake", 0) >= val.get("n_real", 0) else "real"
            baselines[metrics.get("model")] = (val["majority_baseline"], majority)
    if not baselines:
        return "The val majority-class baseline is n/a (no val metrics)."
    if len(set(baselines.values())) == 1:
        score, majority = next(iter(baselines.values()))
        return (
            f'Val majority-class baseline: always answering "{majority}" scores {score:.3f} accuracy '
            f"(and 0.500 balanced accuracy, 0.500 ROC AUC)."
        )
    each = ", ".join(f'{model}: "{majority}" {score:.3f}' for model, (score, majority) in baselines.items())
    return f"Val majority-class baselines differ by model (always answering the majority class scores {each})."


def plot_comparison(path: Path, results: list[dict]) -> Path:
    """Grouped bars of val accuracy and balanced accuracy at threshold 0.5 (not in-sample, as at the threshold
    chosen on val) and ROC AUC per model, and parameter counts."""
    rows = [comparison_row(m) for m in results]
    models = [str(row["model"]) for row in rows]
    x = np.arange(len(rows))
    width = 0.8 / len(CURVE_METRICS)
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    bars_ax, params_ax = fig.subplots(1, 2, width_ratios=[2, 1])
    shown = {"val_accuracy_at_0.5": "accuracy @0.5", "val_balanced_accuracy_at_0.5": "balanced accuracy @0.5"}
    for i, (column, label) in enumerate((shown | {"val_roc_auc": "ROC AUC"}).items()):
        values = np.array([number(row[column]) for row in rows])
        offsets = x + (i - (len(CURVE_METRICS) - 1) / 2) * width
        bars = bars_ax.bar(offsets, np.nan_to_num(values), width, label=f"val {label}")
        labels = ["n/a" if np.isnan(v) else f"{v:.3f}" for v in values]
        bars_ax.bar_label(bars, labels, fontsize="x-small", padding=2)
    for xi, row in zip(x, rows, strict=True):
        if row["val_majority_baseline"] is not None:
            bars_ax.hlines(row["val_majority_baseline"], xi - 0.45, xi + 0.45, colors="black", linestyles="--")
    bars_ax.plot([], [], color="black", linestyle="--", label="val majority baseline")
    bars_ax.set_xticks(x, models)
    # Headroom above 1 keeps the legend off the bars.
    bars_ax.set_ylim(0, 1.3)
    bars_ax.set_yticks(np.linspace(0, 1, 6))
    bars_ax.set_title("validation, chosen epoch")
    bars_ax.legend(fontsize="small", loc="upper center", ncols=4)
    params = np.array([number(row["parameters"]) for row in rows])
    bars = params_ax.bar(x, np.nan_to_num(params) / 1e6, 0.6, color="tab:gray")
    params_ax.bar_label(bars, ["n/a" if np.isnan(p) else f"{p / 1e6:.2f}M" for p in params], fontsize="small")
    params_ax.set_xticks(x, models)
    params_ax.set_ylabel("parameters (millions)")
    params_ax.set_title("model size")
    for ax in (bars_ax, params_ax):
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("model comparison")
    fig.savefig(path, dpi=DPI)
    return path


def write_comparison(run_dir: Path, results: list[dict]) -> list[Path]:
    """comparison.csv, comparison.md (table and baseline sentence) and comparison.png in `run_dir`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = run_dir / "comparison.csv", run_dir / "comparison.md"
    comparison_frame(results).to_csv(csv_path, index=False)
    md_path.write_text(f"{format_comparison(results)}\n\n{baseline_sentence(results)}\n")
    return [csv_path, md_path, plot_comparison(run_dir / "comparison.png", results)]


CROSS_METRICS = {
    "roc_auc": "AUC",
    "frame_roc_auc": "frame AUC",
    "average_precision": "AP",
    "eer": "EER",
    "balanced_accuracy": "bal. acc",
    "n": "videos",
}


def cross_dataset_frame(table: dict[str, dict[str, dict | None]]) -> pd.DataFrame:
    """A row per model, and per store its video-level metrics (`store metric` columns); a store with nothing
    labelled to score is n/a."""
    stores = list(dict.fromkeys(store for by_store in table.values() for store in by_store))
    rows = []
    for model, by_store in table.items():
        row = {"model": model}
        for store in stores:
            metrics = by_store.get(store) or {}
            row |= {f"{store} {label}": metrics.get(name) for name, label in CROSS_METRICS.items()}
        rows.append(row)
    frame = pd.DataFrame(rows)
    for store in stores:
        frame[f"{store} videos"] = frame[f"{store} videos"].astype("Int64")
    return frame


def format_cross_dataset(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(frame.columns) + " |", "|:---|" + "---:|" * (len(frame.columns) - 1)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def plot_cross_dataset(path: Path, frame: pd.DataFrame) -> Path:
    """Grouped bars of each model's video-level AUC on each store, with chance at 0.5."""
    stores = [column.removesuffix(" videos") for column in frame.columns if column.endswith(" videos")]
    x = np.arange(len(stores))
    width = 0.8 / len(frame)
    fig = Figure(figsize=(max(6, 1.8 * len(stores) + 3), 4.5), layout="constrained")
    ax = fig.subplots()
    for i, row in enumerate(frame.to_dict("records")):
        values = np.array([number(row[f"{store} AUC"]) for store in stores])
        bars = ax.bar(x + (i - (len(frame) - 1) / 2) * width, np.nan_to_num(values), width, label=row["model"])
        ax.bar_label(bars, ["n/a" if np.isnan(v) else f"{v:.3f}" for v in values], fontsize="x-small", padding=2)
    ax.axhline(0.5, color="black", linestyle="--", linewidth=0.8, label="chance")
    ax.set_xticks(x, stores)
    ax.set_ylim(0, 1.2)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("video-level ROC AUC")
    ax.legend(fontsize="small", loc="upper center", ncols=len(frame) + 1)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("cross-dataset evaluation")
    fig.savefig(path, dpi=DPI)
    return path


def write_cross_dataset(out_dir: Path, table: dict[str, dict[str, dict | None]], note: str) -> list[Path]:
    """cross_dataset.{md,csv,json,png} in `out_dir`: `table` is model -> store -> video-level metrics; `note`
    says which split was scored and at which threshold."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = cross_dataset_frame(table)
    paths = [out_dir / f"cross_dataset.{suffix}" for suffix in ("md", "csv", "json")]
    paths[0].write_text(f"{format_cross_dataset(frame)}\n\n{note}\n")
    frame.to_csv(paths[1], index=False)
    paths[2].write_text(json.dumps({"note": note, "models": table}, indent=2) + "\n")
    return [*paths, plot_cross_dataset(out_dir / "cross_dataset.png", frame)]


def load_results(run_dir: Path) -> list[dict]:
    """Every RUN_DIR/MODEL/metrics.json, in model-name order."""
    return [json.loads(path.read_text()) for path in sorted(run_dir.glob("*/metrics.json"))]


def runs_side_by_side(runs: dict[str, list[dict]]) -> str:
    """Several runs' comparisons as one table, each model named with its run: e.g. the same models trained on
    squashed frames and on face crops."""
    return format_comparison(
        [{**metrics, "model": f"{metrics['model']} ({name})"} for name, results in runs.items() for metrics in results]
    )
