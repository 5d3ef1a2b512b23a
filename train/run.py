"""Train the seed's three detectors from a clip store, under `accelerate launch` or plain `python`.

The same command runs on a CPU, one GPU, several GPUs or several machines; Accelerate decides which from
how it is launched.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator

from cache import StoreError
from train.data import BALANCE, UsageError
from train.loop import TrainConfig, fit
from train.metrics import SELECT_BY
from train.models import MODEL_NAMES
from train.report import format_comparison, write_comparison, write_model_report


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="train/run.py",
        description=(
            "Train simple_cnn, resnet18 and/or effnet_lstm on the clips of a clipcache store. Writes "
            "RUN_DIR/MODEL/{metrics.json,history.csv,curves.png,confusion.png,best.safetensors,last/}; with "
            "--model all also RUN_DIR/comparison.{md,csv,png}. The best epoch is chosen on val; test is "
            "evaluated once at the end. Exit status 2 on bad input."
        ),
    )
    main.add_argument("--cache", type=Path, required=True, help="the store built by `ingest build-cache`")
    main.add_argument("--model", choices=(*MODEL_NAMES, "all"), required=True, help="which model, or all three")
    main.add_argument("--out", type=Path, required=True, help="run folder (created)")
    main.add_argument("--epochs", type=int, default=2, help="epochs (default 2, as the seed)")
    main.add_argument("--batch-size", type=int, default=4, help="clips per batch and process (default 4)")
    main.add_argument("--lr", type=float, help="learning rate (default 1e-3 for simple_cnn, 1e-4 for the others)")
    main.add_argument("--weight-decay", type=float, default=1e-4, help="Adam weight decay (default 1e-4)")
    main.add_argument("--dropout", type=float, default=0.5, help="dropout of the heads (default 0.5)")
    main.add_argument(
        "--balance",
        choices=BALANCE,
        default="weights",
        help="class-weighted loss (default), balanced sampling, or none",
    )
    main.add_argument("--select-by", choices=SELECT_BY, default="roc_auc", help="val metric choosing the best epoch")
    main.add_argument("--frame-size", type=int, help="resize frames to N x N on the device (default: as stored)")
    main.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), help="overrides accelerate launch's setting")
    main.add_argument("--pretrained", action="store_true", help="start the backbone from timm's ImageNet weights")
    main.add_argument("--weights", type=Path, help="start the backbone from a local safetensors file")
    main.add_argument("--resume", action="store_true", help="continue from RUN_DIR/MODEL/last")
    main.add_argument(
        "--from-features",
        nargs="?",
        const="auto",
        metavar="ENTRY",
        help=(
            "train only the layers after the backbone (resnet18, effnet_lstm) on embeddings that `cache features` "
            "stored: the store's one entry for the model's backbone, or the entry named; no augmentation"
        ),
    )
    main.add_argument("--workers", type=int, default=2, help="DataLoader worker processes per process (default 2)")
    main.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Without a GPU, `cpu=True` makes a multi-process launch use gloo ranks rather than one process each.
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=not torch.cuda.is_available())
    try:
        if args.model == "all" and (args.weights is not None or args.from_features):
            raise UsageError("--weights and --from-features fit one backbone: train one --model at a time with them")
        names = list(MODEL_NAMES) if args.model == "all" else [args.model]
        results = []
        for name in names:
            config = TrainConfig(
                cache=args.cache,
                out=args.out,
                model=name,
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                weight_decay=args.weight_decay,
                dropout=args.dropout,
                balance=args.balance,
                select_by=args.select_by,
                frame_size=args.frame_size,
                workers=args.workers,
                seed=args.seed,
                pretrained=args.pretrained,
                weights=args.weights,
                resume=args.resume,
                from_features=args.from_features,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore" if not accelerator.is_main_process else "default")
                metrics = fit(config, accelerator)
            if accelerator.is_main_process:
                write_model_report(args.out / name, metrics)
            results.append(metrics)
        if accelerator.is_main_process:
            if len(results) > 1:
                write_comparison(args.out, results)
            print(format_comparison(results))
    except (UsageError, StoreError) as error:
        if accelerator.is_main_process:
            print(f"train: error: {error}", file=sys.stderr)
        return 2
    finally:
        accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
