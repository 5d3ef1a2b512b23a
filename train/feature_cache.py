"""A frozen backbone run once over every ok clip of a store, its per-frame embeddings kept in the store, and the
classifier trained on them rebuilt around the backbone that made them.

Training only the layers after the backbone on those embeddings (`train/run.py --from-features`) costs a
few small matrix products per clip instead of a backbone pass over every frame. The features are of the
unaugmented clips, normalised as the trainer normalises them, at one frame size.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object, set_seed
from tqdm import tqdm

from cache.dataset import FeatureDataset
from cache.exits import deferred_stop
from cache.features import FeatureSpec, FeatureWriter, feature_entries
from cache.schema import OK, StoreError, shard_count, shard_slice
from cache.shard_cache import ShardCacheConfig
from cache.store import open_store
from train.augment import IMAGENET_MEAN, IMAGENET_STD, ClipTransform, ModelInput
from train.data import UsageError, check_classes
from train.models import REGISTRY, TIMM_PREFIX, ClipClassifier, ModelConfig, build_model, check_start, family

COMMAND = "python -m train.features"


@dataclass(frozen=True)
class FeatureConfig:
    store: Path
    backbone: str
    weights: Path | None = None
    pretrained: bool = False
    seed: int = 42
    batch_size: int = 8
    frame_size: int | None = None
    mixed_precision: str = "no"
    shard_cache: ShardCacheConfig | None = None  # this node's cache of a bucket's shards (None: the environment's)

    @property
    def model(self) -> str:
        """The backbone as a model name: the timm model alone, under the default head."""
        return TIMM_PREFIX + self.backbone

    def check(self) -> None:
        family(self.model)
        if self.weights is not None and not Path(self.weights).is_file():
            raise UsageError(f"--weights {self.weights}: no such file")
        check_start(self.model, self.pretrained, self.weights)
        if self.batch_size < 1 or (self.frame_size is not None and self.frame_size < 8):
            raise UsageError("--batch-size must be at least 1 and --frame-size at least 8")


def registered_backbones() -> dict[str, str]:
    """The timm backbone of each registered model that has one, and the model: what `--backbone` is usually given."""
    return {model.backbone: name for name, model in REGISTRY.items() if model.backbone is not None}


def backbone_model(config: ModelConfig, seed: int) -> ClipClassifier:
    """The classifier `config` asks for, its random weights (where it has neither pretrained nor a weights file)
    drawn from `seed`: the factory builds the backbone first, so any head on it gets the same backbone."""
    set_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_model(config)


def normalization(model_input: ModelInput) -> str:
    """How the features' frames were normalised, for the entry's record: `imagenet`, or the backbone's own."""
    if (model_input.mean, model_input.std) == (IMAGENET_MEAN, IMAGENET_STD):
        return "imagenet"
    return f"mean {list(model_input.mean)} std {list(model_input.std)}"


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's weights: the same weights give the same entry, other weights another."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def compute_features(config: FeatureConfig, log=print) -> FeatureSpec:
    """Fill (or finish) the store's entry for this backbone; each process takes every world-th shard."""
    config.check()
    state = PartialState(cpu=not torch.cuda.is_available())
    with open_store(config.store) as store:
        status, per_shard, store_spec, fmt = store.status, store.spec.clips_per_shard, store.spec, store.format
    frame_size = config.frame_size or store_spec.size
    model = backbone_model(
        ModelConfig(config.model, pretrained=config.pretrained, weights=config.weights, frame_size=frame_size),
        config.seed,
    )
    if fmt == "hdf5" and state.num_processes > 1:
        raise UsageError("an HDF5 store has one writer: compute features with one process, or use a .zarr store")
    spec = FeatureSpec(
        backbone=config.backbone,
        weights=str(Path(config.weights).resolve()) if config.weights else "",
        pretrained=config.pretrained,
        seed=config.seed,
        weights_sha256=weights_digest(model.backbone),
        frame_size=frame_size,
        frames=store_spec.frames,
        dim=model.feature_dim,
        normalize=normalization(model.input),
    )
    if state.is_main_process:
        with FeatureWriter(config.store) as writer:
            writer.open_entry(spec, len(status), per_shard)
    state.wait_for_everyone()
    started = time.perf_counter()
    computed = _fill(config, spec, model.to(state.device).eval(), state, status, per_shard)
    state.wait_for_everyone()
    seconds = time.perf_counter() - started
    computed = sum(gather_object([computed]))
    if state.is_main_process:
        rate = f"{computed / max(seconds, 1e-9):.1f} clips/s" if computed else "all were done already"
        log(
            f"{config.store}: features/{spec.name} ({spec.source}, {spec.frame_size}px, dim {spec.dim}): "
            f"{computed} clips computed in {seconds:.1f} s ({rate}) by {state.num_processes} process(es)"
        )
    return spec


def _fill(config, spec, model: ClipClassifier, state: PartialState, status: np.ndarray, per_shard: int) -> int:
    """Compute this process's unfinished shards; returns how many clips it computed."""
    n = len(status)
    transform = ClipTransform(
        train=False,
        size=spec.frame_size,
        channels_last=state.device.type == "cuda",
        mean=model.input.mean,
        std=model.input.std,
    )
    autocast = _autocast(state.device, config.mixed_precision)
    # The writer opens first: HDF5 lets a file open for writing be opened again for reading, not the reverse.
    with (
        FeatureWriter(config.store) as writer,
        open_store(config.store, config.shard_cache) as store,
        torch.inference_mode(),
    ):
        done = writer.open_entry(spec, n, per_shard)
        shards = [
            s
            for s in range(state.process_index, shard_count(n, per_shard), state.num_processes)
            if not done[shard_slice(s, per_shard, n)].all()
        ]
        todo = sum(int((status[shard_slice(s, per_shard, n)] == OK).sum()) for s in shards)
        progress = tqdm(total=todo, unit="clip", desc=f"features {spec.backbone}", disable=not state.is_main_process)
        with progress as bar:
            for shard in shards:
                span = shard_slice(shard, per_shard, n)
                values = np.zeros((span.stop - span.start, spec.frames, spec.dim), np.float16)
                ok = np.flatnonzero(status[span] == OK)
                for start in range(0, len(ok), config.batch_size):
                    picked = ok[start : start + config.batch_size]
                    clips = torch.from_numpy(store.read(picked + span.start)).to(state.device, non_blocking=True)
                    with autocast:
                        features = model.forward_features(transform(clips))
                    values[picked] = features.to(torch.float16).cpu().numpy()
                    bar.update(len(picked))
                with deferred_stop():
                    writer.write(spec.name, span, values)
    return todo


def _autocast(device: torch.device, precision: str):
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    return torch.autocast(device.type, dtype=dtypes.get(precision, torch.float32), enabled=precision in dtypes)


def find_entry(cache: Path, model: str, wanted: str) -> FeatureSpec:
    """The entry `wanted`, or for `auto` the store's one entry of `model`'s backbone."""
    backbone = family(model).backbone
    if backbone is None:
        raise UsageError(f"--from-features trains the layers after a timm backbone: {model} has none")
    with open_store(cache) as store:
        entries = feature_entries(store)
    mine = {name: spec for name, spec in entries.items() if spec.backbone == backbone}
    if wanted != "auto":
        if wanted not in entries:
            raise UsageError(f"{cache}: no feature entry {wanted!r} (has: {', '.join(entries) or 'none'})")
        if wanted not in mine:
            raise UsageError(f"features/{wanted} are {entries[wanted].backbone}'s, not {model}'s ({backbone})")
        return mine[wanted]
    if len(mine) != 1:
        if mine:
            raise UsageError(f"{cache}: several feature entries of {backbone}, name one: {', '.join(mine)}")
        raise UsageError(f"{cache}: no features of {backbone} yet: {COMMAND} {cache} --backbone {backbone}")
    return next(iter(mine.values()))


def model_for_features(spec: FeatureSpec, config: ModelConfig) -> ClipClassifier:
    """The whole classifier `config` names, its backbone rebuilt as the entry's was and checked against its digest,
    so that the trained checkpoint holds the backbone that made the features and predicts from raw clips."""
    weights = Path(spec.weights) if spec.weights else None
    if weights is not None and not weights.is_file():
        raise UsageError(f"features/{spec.name}: its backbone weights {weights} are gone")
    rebuilt = replace(config, pretrained=spec.pretrained, weights=weights, frame_size=spec.frame_size)
    model = backbone_model(rebuilt, spec.seed)
    if weights_digest(model.backbone) != spec.weights_sha256:
        raise UsageError(f"features/{spec.name}: the backbone rebuilt from {spec.source} has other weights")
    return model


def feature_split(
    cache: Path, spec: FeatureSpec, split: str, need_both_classes: bool, clip_frames: int | None = None
) -> FeatureDataset:
    try:
        dataset = FeatureDataset(cache, spec.name, split, clip_frames)
    except StoreError as error:
        raise UsageError(str(error)) from error
    if need_both_classes:
        check_classes(cache, split, dataset.labels)
    return dataset
