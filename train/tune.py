"""`train/tune.py --cache STORE --model M --trials N --out DIR`: a study of one model's training hyperparameters
(`train.tuning`), continued when run again; its best parameters written for `train/run.py --config`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

from cache.exits import Ending, ends
from train.checkpoint import write_json
from train.data import UsageError, split_dataset
from train.options import add_model_option, add_training_options, make_accelerator, train_config
from train.tuning import finished, open_study, run_study, save_plots, summary


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="train/tune.py",
        description=(
            "Search the learning rate, weight decay, dropout, batch size (and an LSTM head's size) of one "
            "model with Optuna's TPE sampler. Each trial trains like train/run.py into OUT/trial-N/MODEL/ and "
            "scores the val ROC AUC of its best epoch; a trial below the median of earlier ones after an epoch "
            "is pruned (from the sixth trial on). Writes OUT/best_params.json (for train/run.py --config) and "
            "Optuna's plots OUT/*.png. Running it again continues the study. --seed seeds the trials' training "
            "(the same in each) and the sampler. Exit status 2 on bad input, 4 when the disk is full, 130 after Ctrl-C "
            "and 143 after SIGTERM (the same command continues the study)."
        ),
    )
    add_training_options(main)
    add_model_option(main, "the model to tune (train/run.py --list-models), or timm/NAME")
    main.add_argument("--out", type=Path, required=True, help="study folder (created): trials, plots, best params")
    main.add_argument("--trials", type=int, required=True, help="finished trials the study should have in all")
    main.add_argument("--storage", help="Optuna storage URL (default: sqlite:///OUT/study.db)")
    main.add_argument("--study-name", help="name of the study in the storage (default: the model's name)")
    return main


@ends("tune")
def main(argv: list[str] | None, ending: Ending) -> int:
    args = parser().parse_args(argv)
    ending.where, ending.kept = args.out, "no trial ran; run the same command to continue the study"
    # A trial that fails raises out of the study anyway, so optuna need not log it (with a traceback, for Ctrl-C).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    accelerator = make_accelerator(args)
    try:
        if accelerator.num_processes > 1:
            raise UsageError("run tune as one process (python, not a multi-process accelerate launch)")
        if args.trials < 1:
            raise UsageError("--trials must be at least 1")
        base = train_config(args)
        base.check()
        split_dataset(base.cache, "val", need_both_classes=True, shard_cache=base.shard_cache)
        args.out.mkdir(parents=True, exist_ok=True)
        storage = args.storage or f"sqlite:///{args.out / 'study.db'}"
        study = open_study(storage, args.study_name or args.model, args.model, args.seed)
        ending.kept = lambda: (
            f"{finished(study)} of {args.trials} trials finished; run the same command to continue the study"
        )
        run_study(study, base, args.trials, accelerator)
    finally:
        accelerator.end_training()
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        print("no trial completed: no best parameters to write", file=sys.stderr)
        return 1
    write_json(args.out / "best_params.json", study.best_params)
    print(summary(study))
    print(f"best parameters: {args.out / 'best_params.json'} (train/run.py --config)")
    for line in save_plots(study, args.out):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
