"""Train the registry's detectors from a clip store, under `accelerate launch` or plain `python`.

The same command runs on a CPU, one GPU, several GPUs or several machines; Accelerate decides which from
how it is launched.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from accelerate import Accelerator

from cache.bucket import store_location
from cache.exits import Ending, ends
from cache.shard_cache import cache_config
from train.checkpoint import find_last, read_progress
from train.data import UsageError, check_same_clips, store_names
from train.evaluation import evaluate_models, threshold_note
from train.inference import TrainedModel
from train.loop import TrainConfig, train_one
from train.metrics import SELECT_BY
from train.models import SEED_MODELS, folder_name, registry_lines
from train.options import add_model_option, add_training_options, make_accelerator, train_config
from train.reporting import (
    cross_dataset_frame,
    format_comparison,
    format_cross_dataset,
    write_comparison,
    write_cross_dataset,
)


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="train/run.py",
        description=(
            "Train a registered model (--list-models), any timm model as timm/NAME, or the seed's three (--model "
            "all) on the clips of a clipcache store. Writes RUN_DIR/MODEL/{config.json,metrics.json,history.csv,"
            "curves.png,confusion.png,best.safetensors,last/} (timm/NAME in RUN_DIR/timm-NAME; with --log-with "
            "tensorboard, TensorBoard's events too); with --model all also RUN_DIR/comparison.{md,csv,png}. The "
            "best epoch is chosen on val; test is evaluated once at the end. Exit status: 0 done, 2 bad input, 4 "
            "no space left on the device, 130 after Ctrl-C, 143 after SIGTERM; in the last three, --resume "
            "continues from the checkpoint after the last finished epoch, to the same result as an uninterrupted run."
        ),
    )
    main.add_argument(
        "--list-models",
        action=ListModels,
        help="print the registry (parameters, default input size, backbone) and exit",
    )
    add_training_options(main)
    add_model_option(main, "which model (--list-models), timm/NAME, or all: the seed's three", also=("all",))
    main.add_argument("--out", type=Path, required=True, help="run folder (created)")
    main.add_argument(
        "--config",
        type=Path,
        help="JSON object of option defaults, keyed by option name with underscores (as train/tune.py's "
        "best_params.json); flags given on the command line still win",
    )
    main.add_argument("--batch-size", type=int, default=4, help="clips per batch and process (default 4)")
    main.add_argument("--lr", type=float, help="learning rate (default 1e-3 for simple_cnn, 1e-4 for the others)")
    main.add_argument("--weight-decay", type=float, default=1e-4, help="Adam weight decay (default 1e-4)")
    main.add_argument("--dropout", type=float, default=0.5, help="dropout of the heads (default 0.5)")
    main.add_argument(
        "--lstm-hidden",
        type=int,
        default=128,
        help="hidden size of the LSTM head (effnet_lstm, --temporal lstm; default 128; others ignore it)",
    )
    main.add_argument("--select-by", choices=SELECT_BY, default="roc_auc", help="val metric choosing the best epoch")
    main.add_argument("--resume", action="store_true", help="continue from RUN_DIR/MODEL/last")
    main.add_argument(
        "--eval-cache",
        type=store_location,
        nargs="+",
        default=[],
        help="after training, score the chosen weights on these stores' test splits too (never choosing anything "
        "on them) and write the cross-dataset table RUN_DIR/cross_dataset.{md,csv,json,png}",
    )
    return main


class ListModels(argparse.Action):
    """--list-models: the registry, printed before any required option is asked for, as --help is."""

    def __init__(self, option_strings: list[str], dest: str, help: str):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_) -> None:
        print("\n".join(registry_lines()))
        parser.exit(0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse twice when --config is given: its values become the defaults that the flags of the second pass override."""
    main = parser()
    args = main.parse_args(argv)
    if args.config is None:
        return args
    try:
        main.set_defaults(**config_defaults(main, args.config))
    except UsageError as error:
        main.exit(2, f"train: error: {error}\n")
    return main.parse_args(argv)


def config_defaults(main: argparse.ArgumentParser, path: Path) -> dict:
    """The values of a --config file, checked and converted as the options' own flags would be."""
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"--config {path}: {error}") from error
    if not isinstance(values, dict):
        raise UsageError(f"--config {path}: not a JSON object")
    options = {
        action.dest: action
        for action in main._actions
        if action.option_strings and not action.required and action.dest not in ("help", "config")
    }
    unknown = sorted(values.keys() - options.keys())
    if unknown:
        raise UsageError(f"--config {path}: unknown keys {', '.join(unknown)}; known: {', '.join(sorted(options))}")
    defaults = {}
    for key, value in values.items():
        flag = options[key].option_strings[0]
        try:
            defaults[key] = option_value(options[key], value)
        except (TypeError, ValueError) as error:
            raise UsageError(f"--config {path}: {key}: {value!r} does not fit {flag} ({error})") from error
    return defaults


def option_value(action: argparse.Action, value):
    """`value` as `action`'s flag would have set it: true/false for a switch, else through its type and choices."""
    if action.nargs == 0:
        if not isinstance(value, bool):
            raise TypeError("a switch takes true or false")
        return value
    if value is None:
        return None
    value = action.type(str(value)) if action.type is not None else str(value)
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"not one of {action.choices}")
    return value


def resume_line(config: TrainConfig | None) -> str:
    """Where an interrupted run can go on from: the checkpoint after the last finished epoch."""
    if config is None:
        return "nothing was trained yet; run the same command again"
    last = find_last(config.model_dir / "last")
    if last is None:
        return f"no epoch of {config.model} finished; the same command starts it again"
    epoch = read_progress(last)["epoch"]
    return (
        f"{config.model}'s last checkpoint is after epoch {epoch} of {config.epochs} ({last}); "
        "run the same command with --resume to continue from it"
    )


def cross_dataset(
    args: argparse.Namespace, results: list[dict], accelerator: Accelerator
) -> dict[str, dict[str, dict | None]] | None:
    """The table of a run on several stores or with --eval-cache: each model's test metrics on each training
    store (from its metrics.json), then on each --eval-cache store, scored here; written by the main process."""
    if len(args.cache) == 1 and not args.eval_cache:
        return None
    # Named together, so that a training store and an --eval-cache store of one name stay two columns.
    name_of = {path: name for name, path in store_names([*args.cache, *args.eval_cache]).items()}
    table = {}
    for metrics in results:
        tests = metrics["final"]["test_by_store"].values()
        table[metrics["model"]] = {name_of[c]: test for c, test in zip(args.cache, tests, strict=True)}
    models = [TrainedModel.load(args.out / folder_name(name), accelerator.device) for name in table]
    if args.eval_cache:
        stores = {name_of[cache]: cache for cache in args.eval_cache}
        scored = evaluate_models(models, stores, "test", accelerator, args.batch_size, args.workers, cache_config(args))
        for name, by_store in scored.items():
            table[name] |= by_store
    if accelerator.is_main_process:
        write_cross_dataset(args.out, table, threshold_note(models, "each store's test split"))
    return table


@ends("train")
def main(argv: list[str] | None, ending: Ending) -> int:
    args = parse_args(argv)
    ending.kept, ending.where = functools.partial(resume_line, None), args.out
    accelerator = make_accelerator(args)
    ending.speaks = accelerator.is_main_process
    try:
        if args.model == "all" and (args.weights is not None or args.from_features):
            raise UsageError("--weights and --from-features fit one backbone: train one --model at a time with them")
        if args.model == "all" and args.pretrained:
            raise UsageError(
                "--pretrained: simple_cnn has no pretrained weights; train resnet18 and effnet_lstm with it one "
                "--model at a time (python -m train.report RUN_DIR ... shows runs side by side)"
            )
        check_same_clips([*args.cache, *args.eval_cache])
        results = []
        for name in list(SEED_MODELS) if args.model == "all" else [args.model]:
            config = train_config(args, model=name)
            ending.kept = functools.partial(resume_line, config)
            results.append(train_one(config, accelerator))
        cross = cross_dataset(args, results, accelerator)
        if accelerator.is_main_process:
            if len(results) > 1:
                write_comparison(args.out, results)
            print(format_comparison(results))
            if cross is not None:
                print(f"\n{format_cross_dataset(cross_dataset_frame(cross))}\n\ntable in {args.out}/cross_dataset.md")
    finally:
        accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
