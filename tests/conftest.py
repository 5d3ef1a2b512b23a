"""Real videos, encoded here with PyAV, and real stores built from them."""

from __future__ import annotations

import contextlib
import errno
import gc
import importlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from skimage import data
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bench.remote import free_port, local_s3_server
from ingest.demo import DemoSpec, make_demo, write_video

GRID = 4  # frame numbers are drawn as a GRID x GRID block of bits, most significant first
SIZE = 64  # stored frame size in tests: 16 px per bit cell
TORCH_THREADS = torch.get_num_threads()  # what a new process starts with


def numbered_frame(number: int, width: int, height: int) -> np.ndarray:
    bits = [(number >> (GRID * GRID - 1 - i)) & 1 for i in range(GRID * GRID)]
    cells = np.array(bits, dtype=np.uint8).reshape(GRID, GRID) * 255
    rows = np.repeat(cells, -(-height // GRID), axis=0)[:height]
    image = np.repeat(rows, -(-width // GRID), axis=1)[:, :width]
    return np.repeat(image[..., None], 3, axis=2)


def read_number(frame: np.ndarray) -> int:
    """The number drawn by `numbered_frame`, read from the centre of each cell of any resized copy."""
    h, w = frame.shape[:2]
    number = 0
    for i in range(GRID):
        for j in range(GRID):
            y, x = int((i + 0.5) * h / GRID), int((j + 0.5) * w / GRID)
            number = (number << 1) | int(frame[y - 1 : y + 2, x - 1 : x + 2].mean() > 127)
    return number


def encode_numbered(path: Path, frames: int, width: int = 96, height: int = 64, codec: str = "libx264") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, (numbered_frame(i, width, height) for i in range(frames)), width, height, 25, codec)
    return path


def encode_zero_frames(path: Path) -> Path:
    """An AVI whose video stream holds no frame (beside a short audio stream, so the file opens)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="avi") as container:
        video = container.add_stream("mpeg4", rate=25)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        audio = container.add_stream("aac", rate=8000)
        container.start_encoding()
        silence = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        silence.sample_rate = 8000
        for packet in [*audio.encode(silence), *audio.encode()]:
            container.mux(packet)
    return path


def encode_lying(path: Path, frames: int, keep: float = 0.5) -> Path:
    """An mp4 whose index (at the front) promises `frames` frames but whose data stops part way."""
    full = path.with_suffix(".full.mp4")
    numbered = (numbered_frame(i, 96, 64) for i in range(frames))
    write_video(full, numbered, 96, 64, container_options={"movflags": "faststart"})
    data = full.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    full.unlink()
    return path


def write_broken(folder: Path) -> dict[str, str]:
    """Every kind of bad input the build must survive; name -> what it is."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "id9_0000.mp4").write_bytes(b"")
    (folder / "id9_0001.mp4").write_text("this is not a video\n")
    good = encode_numbered(folder / "tmp.mp4", 40)
    (folder / "id9_0002.mp4").write_bytes(good.read_bytes()[:2000])
    good.unlink()
    encode_zero_frames(folder / "id9_0003.avi")
    return {"id9_0000.mp4": "empty", "id9_0001.mp4": "text", "id9_0002.mp4": "truncated", "id9_0003.avi": "no frames"}


@pytest.fixture(scope="session")
def celebdf_root(tmp_path_factory) -> Path:
    """A Celeb-DF v2-shaped folder of numbered videos (several codecs and lengths) and broken files."""
    root = tmp_path_factory.mktemp("celebdf")
    for i in range(4):
        encode_numbered(root / "Celeb-real" / f"id{i}_0000.mp4", 30 + 7 * i)
        encode_numbered(root / "Celeb-synthesis" / f"id{i}_id{(i + 1) % 4}_0000.mp4", 90 + i)
        encode_numbered(root / "Celeb-synthesis" / f"id{i}_id{(i + 2) % 4}_0001.mp4", 9, 80, 48)
    encode_numbered(root / "YouTube-real" / "00000.mp4", 260, 128, 72)
    encode_numbered(root / "YouTube-real" / "00001.mp4", 50, codec="mpeg4")
    write_broken(root / "Celeb-synthesis")
    (root / "Celeb-real" / "notes.txt").write_text("not a video")
    (root / "List_of_testing_videos.txt").write_text("1 Celeb-real/id3_0000.mp4\n0 Celeb-synthesis/id3_id0_0000.mp4\n")
    return root


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    make_demo(
        root,
        DemoSpec(identities=4, reals_per_identity=1, fakes_per_identity=2, youtube=2, frames=20, width=96, height=64),
    )
    return root


def run_cli(*args: str, check: bool = True, threads: int = TORCH_THREADS) -> subprocess.CompletedProcess:
    """Run a command of ours (`ingest ...`, `train.run ...`) to its end as `python -m` would, in this process.

    Its exit status, output and files are a process's; what it changes of this process (signal handlers,
    environment, torch's threads, accelerate's state) is put back, so that each call starts as a new process
    does, without the 3-4 s a new one spends importing torch. What only a process of its own shows (a launch,
    a variable read at start-up, CUDA, which a later fork of this process would not survive) goes through
    `run_process`; a kill, through `subprocess.Popen`. `threads` is torch's, as OMP_NUM_THREADS gives a process.
    """
    main = _entry_point(args[0])
    stdout, stderr = io.StringIO(), io.StringIO()
    with as_a_new_process(threads), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = main(list(args[1:]))
        except SystemExit as exit:  # argparse's errors and --help
            status = exit.code
            if isinstance(status, str):
                print(status, file=sys.stderr)
                status = 1
        except Exception:
            traceback.print_exc()
            status = 1
    result = subprocess.CompletedProcess(["python", "-m", *args], status or 0, stdout.getvalue(), stderr.getvalue())
    return _checked(result, check)


def run_process(*args: str, check: bool = True, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run a command of ours as a real process, `python -m` with `args`, and `env` added to the environment."""
    command = [sys.executable, "-m", *args]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, **kwargs)
    return _checked(result, check)


def _checked(result: subprocess.CompletedProcess, check: bool) -> subprocess.CompletedProcess:
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(result.args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def _entry_point(module: str) -> Callable[[list[str]], int | None]:
    """The `main` that `python -m module` calls: the module's own, or its package's command line's."""
    found = importlib.import_module(module)
    return found.main if hasattr(found, "main") else importlib.import_module(f"{module}.cli").main


@contextlib.contextmanager
def as_a_new_process(threads: int = TORCH_THREADS) -> Iterator[None]:
    """Signal handlers, environment, torch's threads and Accelerate's state as a new process starts with them, and
    put back after: for a command run in this process, or an Accelerator of other settings than earlier ones.
    `threads`: torch's threads meanwhile, as a process started with OMP_NUM_THREADS has them."""
    from accelerate.state import AcceleratorState

    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    environment = dict(os.environ)
    torch.set_num_threads(threads)
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        yield
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        torch.set_num_threads(TORCH_THREADS)
        os.environ.clear()
        os.environ.update(environment)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


HOLD = """
import importlib, os, sys, time
module, name, store, fork = sys.argv[1:]
lock = getattr(importlib.import_module(module), name)(store)
lock.acquire()
if fork == "fork":
    started, ready = os.pipe()
    if os.fork() == 0:  # a child, as a build's decode worker is, that outlives its parent
        os.write(ready, b"1")  # after the fork's hooks have run in it: "held" means the child is as a worker is
        time.sleep(120)
        os._exit(0)
    os.read(started, 1)
print("held", flush=True)
sys.stdin.read()
lock.release()
"""


@contextlib.contextmanager
def lock_holder(lock: type, store: str, fork: bool = False) -> Iterator[subprocess.Popen]:
    """Another process holding `lock`'s lock (StoreLock, BucketLock) of `store` until its stdin closes, after
    forking a child that sleeps where `fork`; killed after the block."""
    command = [sys.executable, "-c", HOLD, lock.__module__, lock.__name__, store, "fork" if fork else "-"]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "held\n"
        yield process
    finally:
        process.kill()
        process.wait()


def launch_two(*command: str) -> list[str]:
    """`accelerate launch` of `command` as two gloo ranks on this CPU, on a port of their own: tests run in
    parallel (pytest-xdist), and two launches on accelerate's default port would meet."""
    launch = ["accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    return [
        *launch,
        "--main_process_port",
        str(free_port()),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        *command,
    ]


class SmallDisk:
    """A filesystem of its own (tmpfs) at `path`, which fills up for real; `resize` frees or takes away space."""

    def __init__(self, path: Path, size: int):
        self.path = path
        path.mkdir()
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        )
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")

    def resize(self, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def used(self) -> int:
        stats = os.statvfs(self.path)
        return (stats.f_blocks - stats.f_bfree) * stats.f_frsize

    def fill(self, name: str = "filler") -> Path:
        """A file taking every block left: the next write of any size fails."""
        path = self.path / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, bytes(2**16)):
                pass
        except OSError as error:
            assert error.errno == errno.ENOSPC
        finally:
            os.close(fd)
        return path

    def unmount(self) -> None:
        gc.collect()  # files of a command run in this process that only the collector closes (SQLAlchemy's pool)
        subprocess.run(["umount", str(self.path)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    """3 MiB of a real filesystem, unmounted afterwards."""
    disk = SmallDisk(tmp_path / "disk", 3 * 2**20)
    yield disk
    disk.unmount()


def stop_mid_run(args: list[str], ready, stop: int, line: str, errors: Path) -> None:
    """Run `python -m args`, send it `stop` once `ready()`: SIGKILL kills it; any other signal ends it with status
    128 + the signal and one line starting `line` (its stderr is kept in `errors`)."""
    with errors.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=sink)
        deadline = time.monotonic() + 180
        while process.poll() is None and not ready():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(process.pid, stop)
        process.wait()
    if stop == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    else:
        assert process.returncode == 128 + stop, errors.read_text()
        one_line(errors.read_text(), line)


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard reads back from the events in `folder`: tag -> (step, value) pairs, in step order."""
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def one_line(stderr: str, start: str) -> str:
    """The only line a command that stopped part way prints, after its progress bars: no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-1].startswith(start), stderr
    return lines[-1]


def build_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["ingest", "build-cache", "--data-root", str(root), "--out", str(out), "--size", str(SIZE), *extra]


def build_both_formats(root: Path, out: Path, name: str, *extra: str) -> dict[str, Path]:
    """The same build into a Zarr and an HDF5 store: {"zarr": path, "h5": path}."""
    stores = {}
    for suffix in ("zarr", "h5"):
        stores[suffix] = out / f"{name}.{suffix}"
        run_cli(*build_args(root, stores[suffix], *extra))
    return stores


@pytest.fixture(scope="session")
def tiny_cache(demo_root, tmp_path_factory) -> Path:
    """The demo videos as 4-frame 32 x 32 clips: small enough to train all three models on a CPU in seconds."""
    store = tmp_path_factory.mktemp("tiny") / "tiny.zarr"
    run_cli(*build_args(demo_root, store, "--workers", "1", "--frames", "4"), "--size", "32")
    return store


def train_args(cache: Path, out: Path, model: str, *extra: str) -> list[str]:
    return ["train.run", "--cache", str(cache), "--model", model, "--out", str(out), "--workers", "2", *extra]


@pytest.fixture(scope="session")
def all_run(tiny_cache, tmp_path_factory) -> tuple[Path, str]:
    """`--model all` for one epoch on the tiny store: the three models in turn, then the comparison; and stdout."""
    out = tmp_path_factory.mktemp("all")
    return out, run_cli(*train_args(tiny_cache, out, "all", "--epochs", "1")).stdout


LEARNING_SPLIT = {"train": 64, "val": 16, "test": 16}  # videos per split, half of them fakes
LEARNING_SIDE = 64  # encoded frames; the store squashes them to half this
CHECKER = 8  # a fake's checkerboard cell in encoded pixels, one H.264 block: 4 px in the store


def learnable_frames(fake: bool, rng: np.random.Generator, frames: int = 8) -> Iterator[np.ndarray]:
    """A smooth wall of random colours panning under sensor noise; a fake's frames carry a checkerboard of +-50
    grey levels over them all. Texture is what tells them apart, and a flip, a 10 degree turn and +-20% brightness
    and contrast (train/augment.py) all keep it."""
    side = LEARNING_SIDE
    coarse = rng.uniform(40, 215, (4, 6, 3)).astype(np.float32)
    wall = cv2.resize(coarse, (side + frames, side), interpolation=cv2.INTER_CUBIC)
    checks = (np.indices((side, side)) // CHECKER).sum(axis=0) % 2 * 100.0 - 50 if fake else np.zeros((side, side))
    for t in range(frames):
        frame = wall[:, t : t + side] + checks[..., None] + rng.normal(0, 3, (side, side, 3))
        yield np.clip(frame, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def learnable_root(tmp_path_factory) -> Path:
    """`LEARNING_SPLIT`'s real videos and fakes (`learnable_frames`) with a manifest that splits them."""
    root = tmp_path_factory.mktemp("learnable")
    rng = np.random.default_rng(0)
    lines = ["path,label,split"]
    for split, count in LEARNING_SPLIT.items():
        (root / split).mkdir()
        for i in range(count):
            fake = i % 2
            name = f"{split}/{('real', 'fake')[fake]}_{i:02d}.mp4"
            write_video(root / name, learnable_frames(bool(fake), rng), LEARNING_SIDE, LEARNING_SIDE)
            lines.append(f"{name},{fake},{split}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


def build_learnable(root: Path, manifest: Path, store: Path) -> Path:
    """The videos `manifest` lists under `root` through `ingest build-cache` as 4-frame clips of 32 x 32."""
    options = ("--manifest", str(manifest), "--workers", "1", "--frames", "4", "--size", "32")
    run_cli(*build_args(root, store, *options))
    return store


@pytest.fixture(scope="session")
def learnable_cache(learnable_root, tmp_path_factory) -> Path:
    """A real store of `learnable_root`, built once a session: training on it is the costly part."""
    store = tmp_path_factory.mktemp("learnable-store") / "learnable.zarr"
    return build_learnable(learnable_root, learnable_root / "manifest.csv", store)


@pytest.fixture(scope="session")
def mislabelled_cache(learnable_root, tmp_path_factory) -> Path:
    """`learnable_cache` with the train and val labels flipped and the test labels true: what a trainer learns
    that flips labels on their way to the loss."""
    folder = tmp_path_factory.mktemp("mislabelled-store")
    table = pd.read_csv(learnable_root / "manifest.csv")
    taught = table["split"] != "test"
    table.loc[taught, "label"] = 1 - table.loc[taught, "label"]
    table.to_csv(folder / "manifest.csv", index=False)
    return build_learnable(learnable_root, folder / "manifest.csv", folder / "mislabelled.zarr")


@pytest.fixture(scope="session")
def vit_run(tiny_cache, tmp_path_factory) -> Path:
    """timm's tiny test ViT (its own mean and std, built for the store's 32 px frames) with an attention head over
    2-frame clips of every 2nd stored frame, trained one epoch on the tiny store: its model folder."""
    out = tmp_path_factory.mktemp("vit")
    options = ("--temporal", "attention", "--clip-frames", "2", "--epochs", "1")
    run_cli(*train_args(tiny_cache, out, "timm/test_vit", *options))
    return out / "timm-test_vit"


def encode_numbered_with(path: Path, frames: int, codec: str, options: dict[str, str]) -> Path:
    """A 96 x 64 numbered video with encoder `options` (x264-params, x265-params): to choose GOP length and
    open or closed GOPs, which `encode_numbered` leaves at the codec's defaults."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, (numbered_frame(i, 96, 64) for i in range(frames)), 96, 64, codec=codec, options=options)
    return path


PATCH = (40, 240, 120, 320)  # rows and columns of the astronaut photograph around her face
FACE_BOX = np.array([179.0, 83.0, 267.0, 171.0]) - [120, 40, 120, 40]  # dlib's box on the photograph, in the patch
FACE_CENTRE = (FACE_BOX[:2] + FACE_BOX[2:]) / 2


def face_patch(scale: float = 1.0, mirror: bool = False) -> np.ndarray:
    top, bottom, left, right = PATCH
    patch = data.astronaut()[top:bottom, left:right]
    patch = patch[:, ::-1] if mirror else patch
    side = round(200 * scale)
    return np.ascontiguousarray(cv2.resize(patch, (side, side), interpolation=cv2.INTER_AREA))


def frames_with(
    places: list[tuple[int, int]], width: int = 942, height: int = 500, patch=None, extra=None
) -> np.ndarray:
    """One frame per (x, y) top-left corner of the face patch on a textured background; `extra` another patch
    at a fixed place."""
    patch = face_patch() if patch is None else patch
    rng = np.random.default_rng(0)
    background = rng.integers(60, 120, (height, width, 3), dtype=np.uint8)
    frames = np.repeat(background[None], len(places), axis=0)
    for frame, (x, y) in zip(frames, places, strict=True):
        if extra is not None:
            other, (ox, oy) = extra
            frame[oy : oy + other.shape[0], ox : ox + other.shape[1]] = other
        frame[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
    return frames


def moving(width: int, height: int, count: int = 16, side: int = 200) -> list[tuple[int, int]]:
    xs = np.linspace(0, width - side, count).astype(int)
    ys = np.linspace(0, height - side, count).astype(int)
    return list(zip(xs.tolist(), ys.tolist(), strict=True))


FACE_FRAMES = 32


@dataclass(frozen=True)
class KnownFace:
    """A video whose face's box (the photograph's, scaled) is known in every sampled frame: it jumps to a new place
    and size at each of the `count` frames a build samples and holds still until the next, so that the sampled
    frames lie `frames / count` apart as in a long video, each showing the face somewhere else."""

    width: int
    height: int
    sides: tuple[float, ...]  # the face box's side in each sampled frame
    seed: int
    frames: int = 128

    @property
    def indices(self) -> np.ndarray:
        return np.linspace(0, self.frames - 1, len(self.sides)).astype(int)

    def places(self) -> list[tuple[int, int]]:
        """Each sampled frame's top-left corner of the patch: jumps of up to 0.6 of a side from the last."""
        rng = np.random.default_rng(self.seed)
        x, y, places = self.width / 2, self.height / 2, []
        for side in self.sides:
            patch = round(200 * side / 88)
            x = float(np.clip(x + rng.uniform(-0.6, 0.6) * side, 0, self.width - patch))
            y = float(np.clip(y + rng.uniform(-0.6, 0.6) * side, 0, self.height - patch))
            places.append((round(x), round(y)))
        return places

    def boxes(self) -> np.ndarray:
        """(count, 4) the known face box in each sampled frame, source pixels."""
        scales = [round(200 * side / 88) / 200 for side in self.sides]
        return np.array([FACE_BOX * s + [x, y, x, y] for s, (x, y) in zip(scales, self.places(), strict=True)])

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        background = rng.integers(60, 120, (self.height, self.width, 3), dtype=np.uint8)
        shown = np.searchsorted(self.indices, np.arange(self.frames), side="right") - 1
        places = self.places()
        patches = [face_patch(side / 88) for side in self.sides]

        def frame(i: int) -> np.ndarray:
            (x, y), patch = places[shown[i]], patches[shown[i]]
            out = background.copy()
            out[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
            return out

        frames = (frame(i) for i in range(self.frames))
        write_video(path, frames, self.width, self.height, options={"preset": "ultrafast"})
        return path


KNOWN_FACES = {  # DFDC's and Celeb-DF's frame sizes; faces of 80-200 px that grow, shrink, and jump
    "Celeb-real/id0_0000.mp4": KnownFace(942, 500, tuple(np.geomspace(80, 200, 16)), seed=1),
    "Celeb-real/id1_0000.mp4": KnownFace(942, 500, tuple(np.geomspace(200, 80, 16)), seed=2),
    "Celeb-synthesis/id0_id1_0000.mp4": KnownFace(1920, 1080, tuple(np.geomspace(80, 200, 16)), seed=3),
    "Celeb-synthesis/id1_id0_0000.mp4": KnownFace(1920, 1080, tuple(np.geomspace(200, 90, 16)), seed=4),
}


@pytest.fixture(scope="session")
def known_face_root(tmp_path_factory) -> Path:
    """`KNOWN_FACES`'s videos, with a manifest that splits them."""
    root = tmp_path_factory.mktemp("known-faces")
    lines = ["path,label,split"]
    for i, (name, face) in enumerate(KNOWN_FACES.items()):
        face.write(root / name)
        lines.append(f"{name},{int('synthesis' in name)},{('train', 'val')[i % 2]}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


def write_face_video(path: Path, places: list[tuple[int, int]], width: int, height: int, **kwargs) -> Path:
    """A video of the astronaut's face with its top-left corner at `places[t]` in frame t (`frames_with`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, frames_with(places, width, height, **kwargs), width, height)
    return path


FACE_VIDEOS = {  # name: (width, height, the face's places, extra patch); the face is the larger one if two
    "Celeb-real/id0_0000.mp4": (480, 320, moving(480, 320, FACE_FRAMES), None),
    "Celeb-real/id1_0000.mp4": (242, 402, moving(242, 402, FACE_FRAMES), None),  # portrait, not a multiple of 16
    "Celeb-real/id2_0000.mp4": (480, 320, None, None),  # no face
    "Celeb-synthesis/id0_id1_0000.mp4": (640, 360, moving(640, 360, FACE_FRAMES)[::-1], "small"),
    "Celeb-synthesis/id1_id2_0000.mp4": (400, 300, [(150, 80)] * FACE_FRAMES, None),
    # DFDC's frame size, its face's box 87 px: lost where the frame is shrunk to 640 px; 16 frames, to stay quick
    "Celeb-real/id3_0000.mp4": (1920, 1080, [(800 + 40 * t, 400 + 20 * t) for t in range(16)], None),
}


@pytest.fixture(scope="session")
def face_root(tmp_path_factory) -> Path:
    """Videos of a real face photograph at known places (`FACE_VIDEOS`), with a manifest that splits them."""
    root = tmp_path_factory.mktemp("faces")
    lines = ["path,label,split"]
    for i, (name, (width, height, places, extra)) in enumerate(FACE_VIDEOS.items()):
        if places is None:
            write_face_video(root / name, [(0, 0)] * FACE_FRAMES, width, height, patch=np.full((8, 8, 3), 90, np.uint8))
        else:
            other = (face_patch(0.8, mirror=True), (width - 165, 0)) if extra else None
            write_face_video(root / name, places, width, height, extra=other)
        lines.append(f"{name},{int('synthesis' in name)},{('train', 'val')[i % 2]}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


# Data set layouts as downloaded (see ingest/layouts): tiny real videos (64 x 48, a few frames) under each data
# set's own folders, with its own label and split files. A few videos are encoded once and copied.
LAYOUT_VIDEOS = 3


@pytest.fixture(scope="session")
def tiny_videos(tmp_path_factory) -> list[bytes]:
    folder = tmp_path_factory.mktemp("tiny-videos")
    return [encode_numbered(folder / f"{i}.mp4", 4 + i, 64, 48).read_bytes() for i in range(LAYOUT_VIDEOS)]


def place(root: Path, videos: list[bytes], *names: str) -> None:
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(videos[i % len(videos)])


FFPP_PAIRS = {"train": [["000", "001"], ["002", "003"]], "val": [["004", "005"]], "test": [["006", "007"]]}
FFPP_MISSING = "manipulated_sequences/Deepfakes/c23/videos/007_006.mp4"  # listed in test.json, not there
FFPP_UNLISTED = "original_sequences/youtube/c23/videos/999.mp4"  # on no split list
DFD_NAMES = ["01__walk.mp4", "02__walk.mp4", "03__talk.mp4", "04__talk.mp4", "05__hug.mp4", "06__hug.mp4"]
DFD_FAKES = ["01_02__walk__AB12CD34.mp4", "02_01__walk__EF56GH78.mp4", "03_04__talk__IJ90KL12.mp4"]
DFD_FAKES += ["04_03__talk__MN34OP56.mp4", "05_06__hug__QR78ST90.mp4", "06_05__hug__UV12WX34.mp4"]


def write_dfd(root: Path, videos: list[bytes]) -> None:
    for c in ("c23", "c40"):
        place(root, videos, *[f"original_sequences/actors/{c}/videos/{n}" for n in DFD_NAMES])
        place(root, videos, *[f"manipulated_sequences/DeepFakeDetection/{c}/videos/{n}" for n in DFD_FAKES])


@pytest.fixture(scope="session")
def ffpp_root(tmp_path_factory, tiny_videos) -> Path:
    """FaceForensics++ as downloaded: c23 and a few c40 videos, the four methods and FaceShifter, the official
    split files, DFD's folders beside them; one listed fake missing, one real on no list."""
    root = tmp_path_factory.mktemp("ffpp")
    ids = [i for pairs in FFPP_PAIRS.values() for pair in pairs for i in pair]
    place(root, tiny_videos, *[f"original_sequences/youtube/c23/videos/{i}.mp4" for i in ids], FFPP_UNLISTED)
    place(root, tiny_videos, *[f"original_sequences/youtube/c40/videos/{i}.mp4" for i in ids[:3]])
    fakes = [f"{a}_{b}" for pairs in FFPP_PAIRS.values() for p in pairs for a, b in (p, p[::-1])]
    for method in ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter"):
        place(root, tiny_videos, *[f"manipulated_sequences/{method}/c23/videos/{f}.mp4" for f in fakes])
    (root / FFPP_MISSING).unlink()
    (root / "splits").mkdir()
    for name, pairs in FFPP_PAIRS.items():
        (root / "splits" / f"{name}.json").write_text(json.dumps(pairs, indent=2))
    write_dfd(root, tiny_videos)
    return root


@pytest.fixture(scope="session")
def dfd_root(tmp_path_factory, tiny_videos) -> Path:
    root = tmp_path_factory.mktemp("dfd")
    write_dfd(root, tiny_videos)
    return root


DFDC_MISSING = "dfdc_train_part_0/gone.mp4"
DFDC_UNLISTED = "dfdc_train_part_1/stray.mp4"


@pytest.fixture(scope="session")
def dfdc_root(tmp_path_factory, tiny_videos) -> Path:
    """Two training parts with their metadata.json (each original with two fakes; one listed video missing, one
    video on no list) and the test folder: labels.csv with the videos one folder below it."""
    root = tmp_path_factory.mktemp("dfdc")
    for part in range(2):
        folder = f"dfdc_train_part_{part}"
        metadata = {}
        for i in range(4):
            real = f"r{part}{i}.mp4"
            metadata[real] = {"label": "REAL", "split": "train"}
            for k in range(2):
                metadata[f"f{part}{i}{k}.mp4"] = {"label": "FAKE", "split": "train", "original": real}
        place(root, tiny_videos, *[f"{folder}/{name}" for name in metadata])
        if part == 0:
            metadata["gone.mp4"] = {"label": "FAKE", "split": "train", "original": "r00.mp4"}
        (root / folder / "metadata.json").write_text(json.dumps(metadata, indent=1))
    place(root, tiny_videos, DFDC_UNLISTED)
    tests = {"t0.mp4": 1, "t1.mp4": 0, "t2.mp4": 1, "t3.mp4": 0}
    place(root, tiny_videos, *[f"test/videos/{name}" for name in tests])
    (root / "test" / "labels.csv").write_text("filename,label\n" + "".join(f"{n},{v}\n" for n, v in tests.items()))
    return root


DFDCP_SOURCES = ["643049", "701521", "812233", "901777", "913004", "955123"]


@pytest.fixture(scope="session")
def dfdcp_root(tmp_path_factory, tiny_videos) -> Path:
    """DFDC preview: original_videos/<src>/, method_A/<src>/<src>_A/, method_B/<src>/<src>_B/ and dataset.json."""
    root = tmp_path_factory.mktemp("dfdcp")
    listed = {}
    for n, source in enumerate(DFDCP_SOURCES):
        chosen = "test" if n < 2 else "train"
        listed[f"original_videos/{source}/{1000 + n}.mp4"] = {"label": "real", "set": chosen}
        for method in ("A", "B"):
            name = f"method_{method}/{source}/{source}_{method}/{2000 + n}.mp4"
            listed[name] = {"label": "fake", "set": chosen, "target_id": source, "augmentations": {}}
    place(root, tiny_videos, *listed)
    (root / "dataset.json").write_text(json.dumps(listed, indent=2))
    return root


@pytest.fixture(scope="session")
def uadfv_root(tmp_path_factory, tiny_videos) -> Path:
    root = tmp_path_factory.mktemp("uadfv")
    place(root, tiny_videos, *[f"real/{i:04d}.mp4" for i in range(6)], *[f"fake/{i:04d}_fake.mp4" for i in range(6)])
    return root


CELEBDF_LIST = "1 YouTube-real/00001.mp4\n0 Celeb-synthesis/id0_id1_0000.mp4\n1 Celeb-real/id5_0009.mp4\n"


@pytest.fixture(scope="session")
def celebdf_small_root(tmp_path_factory, tiny_videos) -> Path:
    """Celeb-DF v2's folders and test list (1 real, 0 fake); the list's Celeb-real/id5_0009.mp4 is missing."""
    root = tmp_path_factory.mktemp("celebdf-small")
    names = [f"Celeb-real/id{i}_0000.mp4" for i in range(4)] + ["YouTube-real/00000.mp4", "YouTube-real/00001.mp4"]
    names += [f"Celeb-synthesis/id{i}_id{(i + 1) % 4}_0000.mp4" for i in range(4)]
    place(root, tiny_videos, *names)
    (root / "List_of_testing_videos.txt").write_text(CELEBDF_LIST)
    return root


@pytest.fixture(scope="session")
def seed_root(tmp_path_factory, tiny_videos) -> Path:
    root = tmp_path_factory.mktemp("seed")
    names = [f"Celeb-Real/id{i}_0000.mp4" for i in range(3)] + [f"Celeb-Fake/id{i}_id9_0000.mp4" for i in range(3)]
    place(root, tiny_videos, *names, "Testing/x.mp4")
    return root


class CountingApp:
    """The S3 server's WSGI app, counting the requests it answers by method and key."""

    def __init__(self, app):
        self.app = app
        self.requests: list[tuple[str, str]] = []

    def __call__(self, environ, start_response):
        self.requests.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")))
        return self.app(environ, start_response)

    def count(self, method: str, part: str = "") -> int:
        return sum(1 for m, path in self.requests if m == method and part in path)


@dataclass
class S3Server:
    endpoint: str
    app: CountingApp


@pytest.fixture(scope="session")
def s3_server() -> S3Server:
    """A real S3-compatible server (moto's) on 127.0.0.1 for the whole session; the AWS_* variables point every
    client at it, in this process and in the commands it starts."""
    with local_s3_server() as (server, endpoint):
        app = CountingApp(server._server.app)  # the werkzeug server's app, wrapped to count what clients ask
        server._server.app = app
        yield S3Server(endpoint, app)


def new_bucket(endpoint: str) -> str:
    """A new empty bucket on the S3 server at `endpoint`: `s3://NAME`."""
    import boto3

    name = f"clips-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture
def bucket(s3_server, tmp_path, monkeypatch) -> str:
    """A new empty bucket, `s3://NAME`, and a shard cache of this test's own."""
    monkeypatch.setenv("CLIPCACHE_CACHE_DIR", str(tmp_path / "shard-cache"))
    return new_bucket(s3_server.endpoint)
