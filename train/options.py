"""The options of a training run that train/run.py and train/tune.py share, and what a run is made of from them:
its TrainConfig and its Accelerator. One place, so that a trial of tune trains as run.py would."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
from accelerate import Accelerator

from cache.bucket import store_location
from cache.shard_cache import add_cache_options, cache_config
from train.data import BALANCE, UsageError
from train.loop import TrainConfig
from train.models import MODEL_NAMES, TEMPORAL, TIMM_PREFIX
from train.tracking import ALL, TRACKERS, trackers


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """The options train/run.py and train/tune.py share; their dests are TrainConfig fields (see `train_config`)."""
    parser.add_argument(
        "--cache",
        type=store_location,
        action="append",
        required=True,
        help="a store built by `ingest build-cache`; repeat it to train on the union of several stores' train "
        "splits, choose on the union of their val splits and score each store's test split apart (their frames, "
        "size and resize must agree)",
    )
    add_cache_options(parser)
    parser.add_argument(
        "--clip-frames",
        type=int,
        help="frames per clip (default: all the store holds): a store of 32 frames trains on 16-frame clips of "
        "every 2nd frame, from a phase drawn anew each epoch, and scores each video as the mean of its 2 clips",
    )
    parser.add_argument("--epochs", type=int, default=2, help="epochs (default 2, as the seed)")
    parser.add_argument(
        "--balance",
        choices=BALANCE,
        default="weights",
        help="class-weighted loss (default), balanced sampling, or none",
    )
    parser.add_argument("--frame-size", type=int, help="resize frames to N x N on the device (default: as stored)")
    parser.add_argument(
        "--mixed-precision", choices=("no", "bf16", "fp16"), help="overrides accelerate launch's setting"
    )
    parser.add_argument("--pretrained", action="store_true", help="start the backbone from timm's ImageNet weights")
    parser.add_argument("--weights", type=Path, help="start the backbone from a local safetensors file")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="threads per process reading batches from the store ahead of the step (default 2; 0: between steps)",
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument(
        "--log-with",
        metavar="|".join([*TRACKERS, ALL]),
        help="also log the hyperparameters, each epoch's figures and the final test metrics to this experiment "
        "tracker (all: every one installed); TensorBoard's events go to each model's folder",
    )
    parser.add_argument(
        "--gradient-accumulation-steps",
        type=int,
        default=1,
        metavar="N",
        help="step the optimiser once every N batches, on their summed gradients (default 1); an epoch's last, "
        "shorter window steps too",
    )
    parser.add_argument(
        "--max-grad-norm", type=float, metavar="X", help="clip the gradients' total norm to X before each step"
    )
    parser.add_argument(
        "--from-features",
        nargs="?",
        const="auto",
        metavar="ENTRY",
        help=(
            "train only the layers after the backbone (every model but simple_cnn) on embeddings that `python -m "
            "train.features` stored: the store's one entry for the model's backbone, or the entry named; no "
            "augmentation"
        ),
    )


def add_model_option(parser: argparse.ArgumentParser, help: str, also: tuple[str, ...] = ()) -> None:
    """--model, and --temporal for a timm/NAME model's head. Whether timm has NAME is checked with the rest of the
    run's configuration (`TrainConfig.check`), so that a command stopping at another bad argument never imports timm.
    """

    def model_name(value: str) -> str:
        if value in (*MODEL_NAMES, *also) or (value.startswith(TIMM_PREFIX) and len(value) > len(TIMM_PREFIX)):
            return value
        raise argparse.ArgumentTypeError(f"{value!r}: not one of {', '.join((*MODEL_NAMES, *also))} or timm/NAME")

    parser.add_argument("--model", type=model_name, required=True, help=help)
    parser.add_argument(
        "--temporal",
        choices=TEMPORAL,
        help="a timm/NAME model's head over the frames: mean of the frame logits (default), the LSTM of "
        "effnet_lstm, or attention pooling",
    )


def make_accelerator(args: argparse.Namespace) -> Accelerator:
    """The run's Accelerator; a tracker that is not installed or a bad accumulation is refused before it exists."""
    if args.gradient_accumulation_steps < 1:
        raise UsageError("--gradient-accumulation-steps must be at least 1")
    log_with = trackers(args.log_with)
    # Without a GPU, `cpu=True` makes a multi-process launch use gloo ranks rather than one process each.
    return Accelerator(
        mixed_precision=args.mixed_precision,
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=log_with,
        project_dir=args.out,
    )


def train_config(args: argparse.Namespace, **fields) -> TrainConfig:
    """A TrainConfig from the options whose dests name its fields and the shard cache's options, then `fields`:
    new fields pass straight through."""
    names = {field.name for field in dataclasses.fields(TrainConfig)}
    given = {name: value for name, value in vars(args).items() if name in names}
    return TrainConfig(**{**given, "shard_cache": cache_config(args), **fields})
