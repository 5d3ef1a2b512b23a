"""Search one model's training hyperparameters with Optuna, each trial a real run of `train.loop.fit`.

Trials are judged on the validation ROC AUC of their best epoch; the test split chooses nothing. The study
lives in an SQLite file, so running the command again continues it up to --trials finished trials, and the
best parameters are written under train/run.py's option names, for `train/run.py --config`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import Counter
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import optuna
from accelerate import Accelerator
from optuna.trial import FrozenTrial, TrialState
from optuna.visualization import matplotlib as optuna_plots

from train.data import UsageError
from train.loop import TrainConfig, train_one
from train.models import family

LR_RANGE = (1e-5, 1e-2)
WEIGHT_DECAY_RANGE = (1e-6, 1e-2)
DROPOUT_RANGE = (0.0, 0.6)
BATCH_SIZES = (2, 4, 8)
LSTM_HIDDEN_SIZES = (64, 128, 256)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
PLOTS = {
    "optimization_history": optuna_plots.plot_optimization_history,
    "intermediate_values": optuna_plots.plot_intermediate_values,
    "parallel_coordinate": optuna_plots.plot_parallel_coordinate,
    "param_importances": optuna_plots.plot_param_importances,
}


def suggest(trial: optuna.Trial, model: str, temporal: str | None = None) -> dict:
    """One trial's TrainConfig fields; named as run.py's options, so the best ones serve as its --config."""
    params = {
        "lr": trial.suggest_float("lr", *LR_RANGE, log=True),
        "weight_decay": trial.suggest_float("weight_decay", *WEIGHT_DECAY_RANGE, log=True),
        "dropout": trial.suggest_float("dropout", *DROPOUT_RANGE),
        "batch_size": trial.suggest_categorical("batch_size", BATCH_SIZES),
    }
    if family(model, temporal).head == "lstm":
        params["lstm_hidden"] = trial.suggest_categorical("lstm_hidden", LSTM_HIDDEN_SIZES)
    return params


def objective(trial: optuna.Trial, base: TrainConfig, accelerator: Accelerator) -> float:
    """Train the trial's config into BASE_OUT/trial-N; the val AUC of each epoch lets the pruner stop it early."""
    params = suggest(trial, base.model, base.temporal)
    config = dataclasses.replace(base, out=base.out / f"trial-{trial.number}", **params)

    def report(epoch: int, val_metrics: dict) -> None:
        if val_metrics["roc_auc"] is not None:
            trial.report(val_metrics["roc_auc"], epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"val AUC {val_metrics['roc_auc']} after epoch {epoch}")

    metrics = train_one(config, accelerator, on_epoch=report)
    best = metrics["history"][metrics["best_epoch"] - 1]["val"]["roc_auc"]
    return float("nan") if best is None else best  # nan: optuna records the trial as failed


def open_study(storage: str, name: str, model: str, seed: int) -> optuna.Study:
    """Create the study, or load it to continue; a study made for another model is refused."""
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(),
        load_if_exists=True,
    )
    # Seeded by how far the study got: the plain seed would draw the first trials' parameters again on resuming.
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    tuned = study.user_attrs.get("model")
    if tuned is None:
        study.set_user_attr("model", model)
    elif tuned != model:
        raise UsageError(f"study {name} in {storage} tunes {tuned}, not {model}: give another --study-name")
    return study


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_study(study: optuna.Study, base: TrainConfig, trials: int, accelerator: Accelerator) -> None:
    """Run the trials still missing from `trials` finished ones; a killed trial stays RUNNING and does not count."""
    done = finished(study)
    if done >= trials:
        print(f"study {study.study_name}: {done} trials finished already (--trials {trials}); nothing to run")
        return
    print(f"study {study.study_name}: {done} of {trials} trials finished; running {trials - done} more")
    run = partial(objective, base=base, accelerator=accelerator)
    study.optimize(run, n_trials=trials - done, callbacks=[lambda _, trial: print(trial_line(trial), flush=True)])


def format_params(params: dict) -> str:
    return " ".join(
        f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}" for name, value in params.items()
    )


def trial_line(trial: FrozenTrial) -> str:
    if trial.state == TrialState.COMPLETE:
        outcome = f"val AUC {trial.value:.4f}"
    elif trial.state == TrialState.PRUNED:
        outcome = f"pruned after epoch {trial.last_step} (val AUC {trial.intermediate_values[trial.last_step]:.4f})"
    else:
        outcome = trial.state.name.lower()
    return f"trial {trial.number}: {outcome}, {format_params(trial.params)}"


def summary(study: optuna.Study) -> str:
    counts = Counter(trial.state.name.lower() for trial in study.trials)
    states = ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
    best = study.best_trial
    head = f"best of {len(study.trials)} trials ({states}): trial {best.number}"
    return f"{head}, val AUC {best.value:.4f}, {format_params(best.params)}"


def save_plots(study: optuna.Study, out: Path) -> list[str]:
    """Optuna's own plots as OUT/NAME.png; returns a line for each, saying where it went or why it was skipped."""
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    lines = []
    for name, plot in PLOTS.items():
        if name == "param_importances" and complete < 2:
            lines.append(f"{name}: skipped, it needs 2 complete trials and the study has {complete}")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            axes = plot(study)
        figure = np.ravel(axes)[0].figure
        figure.savefig(out / f"{name}.png", dpi=100, bbox_inches="tight")
        plt.close(figure)
        lines.append(f"{name}: {out / f'{name}.png'}")
    return lines
