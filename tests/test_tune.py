"""The hyperparameter search as users run it: real trials of `fit` on a real store, a study in SQLite."""

import dataclasses
import json
import shutil
from pathlib import Path

import optuna
import pytest
from accelerate import Accelerator
from conftest import run_cli, train_args
from optuna.trial import TrialState
from test_train import read_metrics

from train.checkpoint import find_last, read_progress
from train.loop import TrainConfig, fit
from train.run import parse_args
from train.tuning import LSTM_HIDDEN_SIZES, PLOTS, run_study, save_plots, suggest

COMPLETE = TrialState.COMPLETE


def tune_args(cache: Path, out: Path, *extra: str, model: str = "simple_cnn") -> list[str]:
    return ["train.tune", "--cache", str(cache), "--model", model, "--out", str(out), "--workers", "0", *extra]


def load_study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="simple_cnn", storage=f"sqlite:///{out / 'study.db'}")


@pytest.fixture(scope="module")
def study_run(tiny_cache, tmp_path_factory) -> tuple[Path, str]:
    """A two-trial study of one-epoch trials."""
    out = tmp_path_factory.mktemp("tune")
    return out, run_cli(*tune_args(tiny_cache, out, "--trials", "2", "--epochs", "1")).stdout


@pytest.mark.slow
def test_each_trial_trains_its_parameters_and_scores_val(study_run):
    out, stdout = study_run
    trials = load_study(out).trials
    assert [trial.state for trial in trials] == [COMPLETE, COMPLETE]
    for trial in trials:
        metrics = read_metrics(out / f"trial-{trial.number}", "simple_cnn")
        assert {name: metrics["config"][name] for name in trial.params} == trial.params
        assert trial.value == metrics["history"][metrics["best_epoch"] - 1]["val"]["roc_auc"]
        assert trial.intermediate_values == {1: trial.value}, "the pruner hears of every epoch"
        assert f"trial {trial.number}: val AUC {trial.value:.4f}, lr=" in stdout
    assert f"best of 2 trials (2 complete): trial {load_study(out).best_trial.number}" in stdout


@pytest.mark.slow
def test_running_again_continues_the_study_up_to_the_total(study_run, tiny_cache, tmp_path):
    out = tmp_path / "study"
    shutil.copytree(study_run[0], out)
    resumed = run_cli(*tune_args(tiny_cache, out, "--trials", "3", "--epochs", "1")).stdout
    assert "2 of 3 trials finished; running 1 more" in resumed
    trials = load_study(out).trials
    assert [(trial.number, trial.state) for trial in trials] == [(0, COMPLETE), (1, COMPLETE), (2, COMPLETE)]
    assert (out / "trial-2" / "simple_cnn" / "metrics.json").is_file()
    assert len({trial.params["lr"] for trial in trials}) == 3, "a resumed sampler drew the first parameters again"
    again = run_cli(*tune_args(tiny_cache, out, "--trials", "3", "--epochs", "1")).stdout
    assert "3 trials finished already" in again and len(load_study(out).trials) == 3


@pytest.mark.slow
def test_best_params_configure_train_run_and_flags_still_win(study_run, tiny_cache, tmp_path):
    out, _ = study_run
    best = json.loads((out / "best_params.json").read_text())
    study = load_study(out)
    assert best == study.best_params and study.best_value == max(trial.value for trial in study.trials)
    config = str(out / "best_params.json")
    run_cli(*train_args(tiny_cache, tmp_path, "simple_cnn", "--epochs", "1", "--config", config, "--lr", "0.0123"))
    used = read_metrics(tmp_path, "simple_cnn")["config"]
    assert used["lr"] == 0.0123
    assert {name: used[name] for name in ("weight_decay", "dropout", "batch_size")} == {
        name: best[name] for name in ("weight_decay", "dropout", "batch_size")
    }
    assert (used["weight_decay"], used["dropout"]) != (1e-4, 0.5), "the file's values, not run.py's defaults"


@pytest.mark.slow
def test_the_study_is_plotted(study_run):
    out, stdout = study_run
    for name in PLOTS:
        assert (out / f"{name}.png").stat().st_size > 5000, name
        assert f"{name}: {out / f'{name}.png'}" in stdout


def test_param_importances_wait_for_two_complete_trials(tmp_path):
    study = optuna.create_study(direction="maximize")
    lr = optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)
    study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3}, distributions={"lr": lr}, value=0.7))
    lines = save_plots(study, tmp_path)
    assert "param_importances: skipped, it needs 2 complete trials and the study has 1" in lines
    assert not (tmp_path / "param_importances.png").exists()
    assert (tmp_path / "optimization_history.png").is_file()


def test_only_effnet_lstm_searches_the_lstm_size():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    lstm = suggest(study.ask(), "effnet_lstm")
    assert lstm["lstm_hidden"] in LSTM_HIDDEN_SIZES
    assert suggest(study.ask(), "simple_cnn").keys() == lstm.keys() - {"lstm_hidden"}


class Stop(Exception):
    pass


def test_the_epoch_hook_hears_each_epoch_and_can_stop_training_resumably(tiny_cache, tmp_path):
    config = TrainConfig(cache=tiny_cache, out=tmp_path, model="simple_cnn", epochs=3, workers=0)
    heard = []

    def stop_after_two(epoch: int, val_metrics: dict) -> None:
        heard.append((epoch, val_metrics))
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        fit(config, Accelerator(cpu=True), on_epoch=stop_after_two)
    assert [epoch for epoch, _ in heard] == [1, 2]
    assert not (tmp_path / "simple_cnn" / "metrics.json").exists()
    assert read_progress(find_last(tmp_path / "simple_cnn" / "last"))["epoch"] == 2
    metrics = fit(dataclasses.replace(config, resume=True), Accelerator(cpu=True), on_epoch=stop_never)
    assert [record["epoch"] for record in metrics["history"]] == [1, 2, 3]
    assert [record["val"] for record in metrics["history"][:2]] == [val for _, val in heard]


def stop_never(epoch: int, val_metrics: dict) -> None:
    assert epoch == 3, "a resumed run goes on after the epochs it has"


def test_pruned_trials_stop_after_the_epoch_and_leave_the_study_usable(tiny_cache, tmp_path, capsys):
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'study.db'}",
        direction="maximize",
        pruner=optuna.pruners.ThresholdPruner(lower=1.5),  # no AUC reaches it: every trial is pruned
    )
    accelerator = Accelerator(cpu=True)
    base = TrainConfig(cache=tiny_cache, out=tmp_path, model="simple_cnn", epochs=3, workers=0)
    run_study(study, base, 2, accelerator)
    assert [(trial.state, trial.last_step) for trial in study.trials] == [(TrialState.PRUNED, 1)] * 2
    assert capsys.readouterr().out.count(": pruned after epoch 1 (val AUC ") == 2
    for trial in study.trials:
        folder = tmp_path / f"trial-{trial.number}" / "simple_cnn"
        assert read_progress(find_last(folder / "last"))["epoch"] == 1
        assert not (folder / "metrics.json").exists()
    assert accelerator._models == [] and accelerator._optimizers == [], "a pruned trial's model is let go"
    assert "param_importances: skipped" in save_plots(study, tmp_path)[-1]


def tune_error(result) -> str:
    assert result.returncode == 2, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("tune: error:")]
    return line


def test_bad_tune_input_exits_2_with_one_line(study_run, tiny_cache, tmp_path):
    missing = run_cli(*tune_args(tmp_path / "none.zarr", tmp_path / "s", "--trials", "1"), check=False)
    assert "no such store" in tune_error(missing)
    assert not (tmp_path / "s" / "study.db").exists()
    other = run_cli(
        *tune_args(tiny_cache, study_run[0], "--trials", "1", "--study-name", "simple_cnn", model="resnet18"),
        check=False,
    )
    assert "tunes simple_cnn, not resnet18" in tune_error(other)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"learning_rate": 0.1}, "unknown keys learning_rate"),
        ({"model": "resnet18"}, "unknown keys model"),
        ({"batch_size": 2.5}, "batch_size: 2.5 does not fit --batch-size"),
        ({"balance": "often"}, "balance: 'often' does not fit --balance"),
        ({"pretrained": "yes"}, "pretrained: 'yes' does not fit --pretrained"),
        ([0.001], "not a JSON object"),
    ],
)
def test_bad_config_files_exit_2_with_one_line(tmp_path, capsys, values, message):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(values))
    with pytest.raises(SystemExit) as raised:
        parse_args(["--cache", "c", "--model", "simple_cnn", "--out", "o", "--config", str(config)])
    assert raised.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"train: error: --config {config}: ") and message in line
