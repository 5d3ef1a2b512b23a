"""`python -m train.features STORE --backbone B`: a frozen backbone run once over every ok clip, its per-frame
embeddings kept in the store (`train.feature_cache`), for `train/run.py --from-features`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cache.bucket import store_location
from cache.exits import Ending, ends
from cache.shard_cache import add_cache_options, cache_config
from train.feature_cache import COMMAND, FeatureConfig, compute_features, registered_backbones


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog=COMMAND,
        description=(
            "Run a frozen timm backbone over every ok clip of STORE and keep its per-frame embeddings (float16, "
            "(N, T, D)) under features/<backbone>-<weights digest>-<size>px in the same store. Run it again to "
            "finish an interrupted run; other weights or sizes make another entry. Uses the GPU when there is "
            "one; `accelerate launch -m train.features ...` splits the work between processes. Then train the "
            "layers after the backbone alone with `train/run.py --from-features`. Exit status 2 on bad input, 4 when "
            "the disk is full, 130 after Ctrl-C and 143 after SIGTERM; finished shards are kept in all three."
        ),
    )
    main.add_argument(
        "store", type=store_location, help="a store built by `ingest build-cache` (.zarr, .h5, s3://.../NAME.zarr)"
    )
    add_cache_options(main)
    usual = ", ".join(f"{backbone} ({model})" for backbone, model in registered_backbones().items())
    main.add_argument(
        "--backbone",
        required=True,
        help=f"a timm model: a registered model's backbone ({usual}), or any other, for `--model timm/NAME`",
    )
    source = main.add_mutually_exclusive_group()
    source.add_argument("--weights", type=Path, help="backbone weights from a local safetensors file")
    source.add_argument("--pretrained", action="store_true", help="timm's ImageNet weights (needs network)")
    main.add_argument("--seed", type=int, default=42, help="seed of random weights, without either (default 42)")
    main.add_argument("--batch-size", type=int, default=8, help="clips per forward pass (default 8)")
    main.add_argument("--frame-size", type=int, help="resize frames to N x N first (default: as stored)")
    main.add_argument(
        "--mixed-precision",
        choices=("no", "bf16", "fp16"),
        default="no",
        help="run the backbone under autocast in this precision (default no); features are stored as float16",
    )
    return main


@ends("features")
def main(argv: list[str] | None, ending: Ending) -> int:
    args = parser().parse_args(argv)
    ending.where = args.store
    ending.kept = "every finished shard's features are kept; run the same command to compute the rest"
    options = {name: value for name, value in vars(args).items() if name not in ("cache_dir", "cache_limit")}
    compute_features(FeatureConfig(**options, shard_cache=cache_config(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
