"""`python -m train.evaluate --run RUN_DIR --cache STORE ...`: a finished run's cross-dataset table, scored by
`train.evaluation`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from cache.bucket import store_location
from cache.exits import Ending, ends
from cache.shard_cache import add_cache_options, cache_config
from train.data import UsageError, store_names
from train.evaluation import evaluate_models, load_models, threshold_note
from train.perturb import parse_perturb
from train.reporting import cross_dataset_frame, format_cross_dataset, write_cross_dataset
from train.robustness import PerturbSettings, robustness_note, score_robustness, write_robustness

EVAL_SPLITS = ("test", "all")


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="python -m train.evaluate",
        description=(
            "Score a finished run's chosen weights (every model of a --model all run) on other stores, at the "
            "threshold chosen on the run's own validation split, and write the cross-dataset table "
            "OUT/cross_dataset.{md,csv,json,png}: a row per model and, per store, the video-level ROC AUC, "
            "the frame-level AUC (every frame scored alone), average precision, EER, balanced accuracy and number of "
            "videos. A store whose preprocessing differs "
            "from the run's (frames, size, resize mode, face margin) is refused. Exit status 2 on bad input, 4 on "
            "a full disk, 5 when an s3:// store's bucket stops answering, 130 after Ctrl-C, 143 after SIGTERM."
        ),
    )
    main.add_argument("--run", type=Path, required=True, help="RUN_DIR of train/run.py, or one model's RUN_DIR/MODEL")
    main.add_argument("--cache", type=store_location, nargs="+", required=True, help="the stores to score on")
    add_cache_options(main)
    main.add_argument(
        "--split", choices=EVAL_SPLITS, default="test", help="score the stores' test split (default) or all videos"
    )
    main.add_argument("--out", type=Path, help="folder of the table (default: RUN_DIR)")
    main.add_argument("--batch-size", type=int, default=8, help="videos per forward pass (default 8)")
    main.add_argument("--workers", type=int, default=2, help="threads reading clips ahead (default 2)")
    main.add_argument(
        "--perturb",
        metavar="all|NAME[,NAME]",
        help=(
            "also score the clips distorted as DeeperForensics-1.0 distorts videos, each distortion at its five "
            "levels (saturation, contrast, block, noise, blur, jpeg, video), and write OUT/robustness.{md,csv,json,png}"
        ),
    )
    main.add_argument("--perturb-seed", type=int, default=0, help="seed of the distortions' random draws (default 0)")
    return main


@ends("evaluate")
def main(argv: list[str] | None, ending: Ending) -> int:
    args = parser().parse_args(argv)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    out = args.out or args.run
    ending.where, ending.speaks = out, accelerator.is_main_process
    ending.kept = "no complete table was written; run the same command again"
    shard_cache = cache_config(args)
    if args.batch_size < 1 or args.workers < 0:
        raise UsageError("--batch-size must be at least 1, --workers at least 0")
    perturb = PerturbSettings(tuple(parse_perturb(args.perturb)), args.perturb_seed) if args.perturb else None
    models = load_models(args.run, accelerator.device)
    stores = store_names(args.cache)
    table = evaluate_models(models, stores, args.split, accelerator, args.batch_size, args.workers, shard_cache)
    what = "each store's test split" if args.split == "test" else "every labelled video of each store"
    if accelerator.is_main_process:
        write_cross_dataset(out, table, threshold_note(models, what))
        ending.kept = f"the table is written in {out}"
        print(f"{format_cross_dataset(cross_dataset_frame(table))}\n\ntable in {out}/cross_dataset.md")
    if perturb is not None:
        rows = score_robustness(
            models, stores, args.split, perturb, accelerator, args.batch_size, args.workers, shard_cache
        )
        if accelerator.is_main_process:
            write_robustness(out, rows, perturb, f"{robustness_note(perturb)} {threshold_note(models, what)}")
            ending.kept = f"the tables are written in {out}"
            print(f"robustness table in {out}/robustness.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
