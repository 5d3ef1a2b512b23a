"""The feature cache on real stores: what it stores, resuming after SIGKILL, never mixing, training on it."""

import json
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import build_args, launch_two, one_line, run_cli, run_process, stop_mid_run, train_args

from cache import open_store
from cache.dataset import FeatureDataset
from cache.features import FeatureWriter, feature_entries
from cache.schema import OK, StoreError
from train.augment import ClipTransform
from train.checkpoint import load_weights
from train.feature_cache import backbone_model
from train.models import ModelConfig, folder_name

pytestmark = pytest.mark.slow


def build_store(demo_root: Path, out: Path, suffix: str = "zarr") -> Path:
    """The demo videos as 4-frame 32 x 32 clips, 2 to a shard (14 shards: room for a kill to land mid-run)."""
    store = out / f"features.{suffix}"
    run_cli(*build_args(demo_root, store, "--workers", "1", "--frames", "4", "--clips-per-shard", "2"), "--size", "32")
    return store


def features_args(store: Path, *extra: str) -> list[str]:
    return ["train.features", str(store), "--backbone", "resnet18", *extra]


@pytest.fixture(scope="module")
def computed(demo_root, tmp_path_factory) -> Path:
    store = build_store(demo_root, tmp_path_factory.mktemp("computed"))
    run_cli(*features_args(store))
    return store


def only_entry(store: Path):
    with open_store(store) as handle:
        entries = feature_entries(handle)
    assert len(entries) == 1
    return next(iter(entries.values()))


def stored_values(store: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    group = zarr.open_group(store, mode="r")["features"][name]
    return group["values"][...], group["done"][...]


@pytest.mark.parametrize("suffix", ["zarr", "h5"])
def test_features_are_the_frozen_backbones_per_frame_output(demo_root, tmp_path, suffix):
    store = build_store(demo_root, tmp_path, suffix)
    result = run_cli(*features_args(store))
    spec = only_entry(store)
    assert spec.backbone == "resnet18" and spec.dim == 512 and spec.frame_size == 32 and spec.frames == 4
    assert f"features/{spec.name}" in result.stdout and "random, seed 42" in result.stdout
    assert f"features/{spec.name}: resnet18" in run_cli("cache", "info", str(store)).stdout
    with open_store(store) as handle:
        ok = handle.rows()
        clips = handle.read(ok[:3])
        dataset = FeatureDataset(store, spec.name)
    assert dataset.values.dtype == torch.float16 and tuple(dataset.values.shape) == (len(ok), 4, 512)
    model = backbone_model(ModelConfig("resnet18"), 42).eval()
    with torch.no_grad():
        expected = model.forward_features(ClipTransform(train=False)(torch.from_numpy(clips)))
    torch.testing.assert_close(dataset.values[:3].float(), expected, atol=2e-2, rtol=2e-3)
    assert dataset.values.abs().sum(dim=(1, 2)).min() > 0  # every ok clip has its features


def done_count(store: Path) -> int:
    try:
        group = zarr.open_group(store, mode="r")["features"]
        return int(sum(group[name]["done"][...].sum() for name in group.group_keys()))
    except (KeyError, FileNotFoundError, ValueError):
        return 0


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_killed_or_preempted_run_resumes_to_what_an_uninterrupted_run_stores(demo_root, computed, tmp_path, stop):
    store = build_store(demo_root, tmp_path)
    kept = "features: interrupted: every finished shard's features are kept"
    args = features_args(store, "--batch-size", "1")
    stop_mid_run(args, lambda: done_count(store) >= 4, stop, kept, tmp_path / "stderr.txt")
    with open_store(store) as handle:
        rows = len(handle)
    assert 4 <= done_count(store) < rows
    resumed = run_cli(*features_args(store)).stdout
    computed_now = int(re.search(r": (\d+) clips computed", resumed).group(1))
    assert 0 < computed_now < rows
    name = only_entry(store).name
    assert name == only_entry(computed).name
    values, done = stored_values(store, name)
    whole, whole_done = stored_values(computed, name)
    assert done.all() and whole_done.all()
    np.testing.assert_allclose(values.astype(np.float32), whole.astype(np.float32), atol=2e-3)
    again = run_cli(*features_args(store)).stdout
    assert "0 clips computed" in again and "all were done already" in again


def test_other_weights_make_another_entry_and_never_mix(computed, tmp_path):
    first = only_entry(computed)
    before, _ = stored_values(computed, first.name)
    run_cli(*features_args(computed, "--seed", "7"))
    with open_store(computed) as handle:
        entries = feature_entries(handle)
    assert len(entries) == 2 and first.name in entries
    second = next(spec for name, spec in entries.items() if name != first.name)
    assert second.seed == 7 and second.weights_sha256 != first.weights_sha256
    after, _ = stored_values(computed, first.name)
    assert (after == before).all()
    with FeatureWriter(computed) as writer, pytest.raises(StoreError, match="holds other features"):
        writer.open_entry(type(first)(**{**first.__dict__, "dim": 256}), 28, 2)
    several = run_cli(*train_args(computed, tmp_path / "r", "resnet18", "--from-features"), check=False)
    assert several.returncode == 2 and "several feature entries" in several.stderr
    wrong = run_cli(*train_args(computed, tmp_path / "r", "effnet_lstm", "--from-features", first.name), check=False)
    assert wrong.returncode == 2 and "not effnet_lstm's" in wrong.stderr
    cnn = run_cli(*train_args(computed, tmp_path / "r", "simple_cnn", "--from-features"), check=False)
    assert cnn.returncode == 2 and "simple_cnn has none" in cnn.stderr


FROM_FEATURES = [  # (model, its backbone, options): the seed's two, and a timm model normalised with its own mean/std
    ("resnet18", "resnet18", ()),
    ("effnet_lstm", "efficientnet_b0", ()),
    ("timm/test_resnet", "test_resnet", ("--temporal", "attention")),
]


@pytest.mark.parametrize(("model", "backbone", "options"), FROM_FEATURES)
def test_from_features_a_model_agrees_with_its_full_forward(demo_root, tmp_path, model, backbone, options):
    store = build_store(demo_root, tmp_path)
    run_cli("train.features", str(store), "--backbone", backbone)
    spec = only_entry(store)
    assert spec.normalize == ("imagenet" if backbone != "test_resnet" else "mean [0.5, 0.5, 0.5] std [0.5, 0.5, 0.5]")
    run_cli(*train_args(store, tmp_path / "run", model, "--epochs", "2", "--from-features", *options))
    folder = tmp_path / "run" / folder_name(model)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["config"]["from_features"] == spec.name and metrics["config"]["frame_size"] == 32
    assert len(metrics["history"]) == 2 and metrics["final"]["val"]["roc_auc"] is not None
    # The checkpoint is the whole classifier: the frozen backbone that made the features, and the trained head.
    temporal = options[1] if options else None
    classifier = backbone_model(ModelConfig(model, temporal=temporal), 0)
    classifier.load_state_dict(load_weights(folder / "best.safetensors"))
    classifier.eval()
    dataset = FeatureDataset(store, spec.name, "val")
    with open_store(store) as handle:
        clips = torch.from_numpy(handle.read(dataset.rows))
        assert (handle.status[dataset.rows] == OK).all()
    with torch.no_grad():
        transform = ClipTransform(train=False, size=32, mean=classifier.input.mean, std=classifier.input.std)
        full = classifier(transform(clips)).softmax(dim=1)
        head = classifier.forward_head(dataset.values.float()).softmax(dim=1)
    torch.testing.assert_close(head, full, atol=1e-2, rtol=1e-2)


def test_a_split_reads_only_its_own_rows(demo_root, tmp_path):
    store = build_store(demo_root, tmp_path)
    run_cli(*features_args(store))
    name = only_entry(store).name
    whole = FeatureDataset(store, name)
    with open_store(store) as handle:
        val, per_shard = handle.rows("val"), handle.spec.clips_per_shard
    # Spoil every chunk of values that holds no val clip: a split that read the whole entry could not load.
    chunks = store / "features" / name / "values" / "c"
    spoiled = [chunk for chunk in chunks.iterdir() if not np.isin(val // per_shard, int(chunk.name)).any()]
    assert spoiled
    for chunk in spoiled:
        for file in chunk.rglob("*"):
            if file.is_file():
                file.write_bytes(b"not a chunk")
    dataset = FeatureDataset(store, name, "val")
    assert (dataset.rows == val).all()
    assert torch.equal(dataset.values, whole.values[np.searchsorted(whole.rows, val)])
    with pytest.raises(Exception):  # noqa: B017 - whichever error the codec raises on a spoiled chunk
        FeatureDataset(store, name, "train")


def test_two_processes_store_what_one_process_stores(demo_root, computed, tmp_path):
    store = build_store(demo_root, tmp_path)
    assert "by 2 process(es)" in run_process(*launch_two("-m", *features_args(store))).stdout
    name = only_entry(store).name  # the same backbone and weights as `computed`'s first entry
    values, done = stored_values(store, name)
    whole, _ = stored_values(computed, name)
    assert done.all() and (values == whole).all()


def test_a_full_disk_ends_with_one_line_and_running_again_finishes(demo_root, computed, small_disk):
    small_disk.resize(64 * 2**20)
    store = build_store(demo_root, small_disk.path)
    small_disk.resize(small_disk.used() + 64 * 2**10)  # room for the entry's start, not its values
    result = run_cli(*features_args(store), check=False)
    assert result.returncode == 4, result.stderr
    one_line(result.stderr, f"features: error: no space left on the device of {store}: every finished shard's")
    small_disk.resize(64 * 2**20)
    run_cli(*features_args(store))
    name = only_entry(store).name
    values, done = stored_values(store, name)
    whole, _ = stored_values(computed, name)
    assert done.all()
    np.testing.assert_allclose(values.astype(np.float32), whole.astype(np.float32), atol=2e-3)
