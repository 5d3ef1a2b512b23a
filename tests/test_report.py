"""Reports written from fabricated (but realistically computed) trainer metrics, read back from disk."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from train.metrics import evaluate
from train.report import main
from train.reporting import (
    comparison_frame,
    final_split,
    format_comparison,
    history_frame,
    write_comparison,
    write_history_csv,
    write_model_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VAL_LABELS = [0, 1, 1, 1, 1, 0, 1, 1]  # 6 of 8 fake: the majority baseline is 0.75
TEST_LABELS = [0, 0, 1, 1, 1, 0]


def fake_metrics(model: str, parameters: int, epochs: int = 2, test: bool = True, one_class: bool = False) -> dict:
    """A metrics.json as the trainer writes it; `one_class` gives a val split of fakes only (AUC undefined)."""
    val_labels = [1] * len(VAL_LABELS) if one_class else VAL_LABELS
    history = []
    for epoch in range(1, epochs + 1):
        # Later epochs separate the classes better.
        probs = [0.3 + (0.1 * epoch if y else -0.05 * epoch) + 0.01 * i for i, y in enumerate(val_labels)]
        history.append(
            {
                "epoch": epoch,
                "lr": 1e-3 / epoch,
                "seconds": 10.0 + epoch,
                "train_loss": 0.7 - 0.1 * epoch,
                "train_accuracy": 0.5 + 0.1 * epoch,
                "train_clips": 33,
                "train_unique_clips": 30,
                "clips_per_second": 20.0 * epoch,
                "data_wait_fraction": 0.05,
                "val_loss": 0.69 - 0.05 * epoch,
                "val": evaluate(val_labels, probs),
            }
        )
    final_val = {**evaluate(val_labels, probs, 0.43), "loss": history[-1]["val_loss"]}
    final_test = evaluate(TEST_LABELS, [0.2, 0.5, 0.6, 0.9, 0.3, 0.1], 0.43) if test else None
    return {
        "model": model,
        "parameters": parameters,
        "config": {"lr": 1e-3},
        "select_by": "roc_auc",
        "best_epoch": epochs,
        "threshold": 0.43,
        "history": history,
        "final": {"val": final_val, "test": final_test},
    }


def assert_png(path: Path) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] >= 200 and image.shape[1] >= 200
    assert image.std() > 0.01  # something drawn, not a blank canvas


def test_history_csv_has_one_flat_row_per_epoch(tmp_path):
    metrics = fake_metrics("simple_cnn", 422530)
    path = write_history_csv(tmp_path, metrics["history"])
    assert path == tmp_path / "history.csv"
    frame = pd.read_csv(path)
    assert len(frame) == 2
    for column in ("epoch", "lr", "train_loss", "clips_per_second", "val_loss", "val_roc_auc", "val_eer"):
        assert column in frame.columns
    assert "val_majority_baseline" in frame.columns
    assert not any("confusion" in column for column in frame.columns)
    assert frame["epoch"].tolist() == [1, 2]
    assert frame["train_loss"].tolist() == pytest.approx([0.6, 0.5])
    second = metrics["history"][1]["val"]
    assert frame["val_roc_auc"][1] == pytest.approx(second["roc_auc"])
    assert frame["val_balanced_accuracy"][1] == pytest.approx(second["balanced_accuracy"])
    assert frame["val_majority_baseline"].tolist() == pytest.approx([0.75, 0.75])


def test_model_report_writes_readable_pngs(tmp_path):
    paths = write_model_report(tmp_path / "simple_cnn", fake_metrics("simple_cnn", 422530))
    assert [p.name for p in paths] == ["history.csv", "curves.png", "confusion.png"]
    for path in paths[1:]:
        assert_png(path)


def test_undefined_auc_and_no_test_split_still_report(tmp_path):
    metrics = fake_metrics("resnet18", 11_300_000, epochs=1, test=False, one_class=True)
    assert metrics["final"]["val"]["roc_auc"] is None
    split, shown = final_split(metrics)
    assert split == "val" and shown is metrics["final"]["val"]
    paths = write_model_report(tmp_path, metrics)
    for path in paths[1:]:
        assert_png(path)
    frame = pd.read_csv(paths[0])
    assert len(frame) == 1 and math.isnan(frame["val_roc_auc"][0])
    assert history_frame(metrics["history"])["val_roc_auc"].isna().all()


def test_confusion_prefers_test_split():
    metrics = fake_metrics("simple_cnn", 1)
    split, shown = final_split(metrics)
    assert split == "test" and shown["n"] == len(TEST_LABELS)
    with pytest.raises(ValueError, match="no final"):
        final_split({**metrics, "final": {"val": None, "test": None}})


@pytest.fixture
def three_results() -> list[dict]:
    return [
        fake_metrics("simple_cnn", 422530),
        fake_metrics("resnet18", 11_300_000, test=False),
        fake_metrics("effnet_lstm", 5_100_000, epochs=3),
    ]


def test_comparison_frame_values(three_results):
    frame = comparison_frame(three_results).set_index("model")
    assert frame.loc["simple_cnn", "val_accuracy_at_t_in_sample"] == three_results[0]["final"]["val"]["accuracy"]
    assert frame.loc["simple_cnn", "test_roc_auc"] == three_results[0]["final"]["test"]["roc_auc"]
    assert frame.loc["simple_cnn", "test_accuracy_at_t"] == three_results[0]["final"]["test"]["accuracy"]
    assert frame.loc["simple_cnn", "train_accuracy"] == pytest.approx(0.7)  # at the chosen epoch, 2
    assert pd.isna(frame.loc["resnet18", "test_accuracy_at_t"])
    assert frame.loc["effnet_lstm", "clips_per_second"] == pytest.approx(40.0)  # mean of 20, 40, 60
    assert frame.loc["effnet_lstm", "best_epoch"] == 3


def test_val_accuracy_is_given_at_0_5_beside_the_in_sample_figure_at_the_threshold_chosen_on_val():
    metrics = fake_metrics("one_epoch", 1, epochs=1)  # its fakes score 0.41 to 0.47: 0.5 calls none of them fake
    row = comparison_frame([metrics]).iloc[0]
    at_half, at_t = metrics["history"][0]["val"], metrics["final"]["val"]
    assert (at_half["threshold"], at_t["threshold"], row["threshold_chosen_on_val"]) == (0.5, 0.43, 0.43)
    assert row["val_accuracy_at_0.5"] == at_half["accuracy"] == 0.25
    assert row["val_accuracy_at_t_in_sample"] == at_t["accuracy"] == 0.75
    assert row["val_balanced_accuracy_at_0.5"] == at_half["balanced_accuracy"] == 0.5
    assert row["val_balanced_accuracy_at_t_in_sample"] == at_t["balanced_accuracy"]
    header, _, line, _, note = format_comparison([metrics]).splitlines()
    cells = dict(zip(header.strip("| ").split(" | "), line.strip("| ").split(" | "), strict=True))
    shown = (cells["t (chosen on val)"], cells["val acc @0.5"], cells["val acc @t (in-sample)"])
    assert shown == ("0.430", "0.250", "0.750")
    assert "test acc @t" in cells and "test bal. acc @t" in cells
    assert "chose on val" in note and "in-sample" in note and "test figures use t" in note


def test_comparison_with_undefined_auc_and_differing_baselines(tmp_path, three_results):
    one_class = fake_metrics("one_class", 7, one_class=True)
    one_class["history"][0]["clips_per_second"] = None
    one_class["best_epoch"] = None
    results = [*three_results, one_class]
    row = comparison_frame(results).set_index("model").loc["one_class"]
    assert pd.isna(row["val_roc_auc"]) and pd.isna(row["best_epoch"])
    assert row["clips_per_second"] == pytest.approx(40.0)  # the missing epoch is left out, not counted as 0
    paths = write_comparison(tmp_path, results)
    markdown = paths[1].read_text()
    one_class_line = next(line for line in markdown.splitlines() if line.startswith("| one_class |"))
    assert one_class_line.startswith("| one_class | 7 | n/a |")
    assert 'one_class: "fake" 1.000' in markdown and 'simple_cnn: "fake" 0.750' in markdown
    assert_png(paths[2])


def test_comparison_files(tmp_path, three_results):
    paths = write_comparison(tmp_path, three_results)
    assert [p.name for p in paths] == ["comparison.csv", "comparison.md", "comparison.png"]
    frame = pd.read_csv(paths[0])
    assert len(frame) == 3
    assert dict(zip(frame["model"], frame["parameters"], strict=True)) == {
        "simple_cnn": 422530,
        "resnet18": 11_300_000,
        "effnet_lstm": 5_100_000,
    }
    assert frame["test_accuracy_at_t"].isna().tolist() == [False, True, False]
    assert "val_accuracy_at_t_in_sample" in frame.columns and "val_accuracy_at_0.5" in frame.columns
    markdown = paths[1].read_text()
    for model in ("simple_cnn", "resnet18", "effnet_lstm"):
        assert f"| {model} |" in markdown
    assert "| n/a |" in markdown
    assert "| 422530 |" in markdown
    assert "majority" in markdown.lower() and '"fake" scores 0.750' in markdown
    assert_png(paths[2])


def test_format_comparison_is_a_markdown_table(three_results):
    *lines, blank, note = format_comparison(three_results).splitlines()
    assert len(lines) == 2 + 3 and blank == "" and note.startswith("t: the verdict threshold")
    assert len({line.count("|") for line in lines}) == 1  # every row has the header's cells
    assert lines[2].startswith("| simple_cnn | 422530 | 2 | 0.430 |")
    assert set(lines[1]) <= set("|:-")


def test_report_redraws_runs_and_puts_several_side_by_side(tmp_path, three_results, capsys):
    for name in ("squash", "face"):
        for metrics in three_results:
            (tmp_path / name / metrics["model"]).mkdir(parents=True)
            (tmp_path / name / metrics["model"] / "metrics.json").write_text(json.dumps(metrics))
    main([str(tmp_path / "squash"), str(tmp_path / "face")])
    printed = capsys.readouterr().out
    side_by_side = printed.split("side by side:\n")[1].splitlines()
    assert "val acc @t (in-sample)" in side_by_side[0] and side_by_side[-1].startswith("t: the verdict threshold")
    assert [line.split(" | ")[0] for line in side_by_side[2:-2]] == [
        f"| {model} ({run})" for run in ("squash", "face") for model in ("effnet_lstm", "resnet18", "simple_cnn")
    ]
    assert (tmp_path / "face" / "comparison.md").is_file() and (tmp_path / "squash" / "comparison.png").is_file()
