"""The registry of `python -m bench run`'s stages: each name and the module that times it, in the order run."""

from __future__ import annotations

import time

from tqdm import tqdm

from bench.context import BenchConfig, Context
from bench.decode import decode
from bench.faces import faces
from bench.features import features
from bench.feed import feed
from bench.h2d import h2d
from bench.ingest import ingest
from bench.read import read
from bench.remote import remote
from bench.resize import resize
from bench.scan import scan
from bench.shard_cache import shard_cache
from bench.timing import Row
from bench.train import train
from bench.write import write

RUNNERS = {
    "decode": decode,
    "resize": resize,
    "write": write,
    "ingest": ingest,
    "faces": faces,
    "read": read,
    "remote": remote,
    "shard-cache": shard_cache,
    "feed": feed,
    "h2d": h2d,
    "train": train,
    "features": features,
    "scan": scan,
}
STAGES = tuple(RUNNERS)
WITHOUT_VIDEOS = ("scan", "shard-cache")  # stages that make their own input: they need no --data or --demo


def run_stages(config: BenchConfig, stages: list[str]) -> tuple[list[Row], dict[str, float]]:
    """Every stage's rows, and the seconds each took: what a whole run costs is part of its record."""
    context = Context()
    rows: list[Row] = []
    seconds: dict[str, float] = {}
    bar = tqdm(stages, unit="stage", desc="bench")
    for name in bar:
        bar.set_postfix(stage=name)
        started = time.perf_counter()
        rows.extend(RUNNERS[name](config, context))
        seconds[name] = time.perf_counter() - started
    return rows, seconds
