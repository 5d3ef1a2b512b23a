"""Every command ends the same way (`cache.exits.ends`): a full disk is exit 4 and a SIGTERM 143, each as one line on
stderr saying what is kept and how to go on.

Each command runs on a small real input of the session's fixtures. The disk is a real full tmpfs; the SIGTERM goes
to a real process whose stdout is a pipe kept full, so that it cannot finish before the signal: it is signalled once
its work is under way (`UNDER_WAY`), or, where that is over too soon to catch, while it waits to print.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import build_args, one_line, run_cli, run_process

from bench.remote import free_port
from cache.bucket import Bucket

Fixture = Callable[[str], object]  # request.getfixturevalue: each case asks only for what it runs on
TINY_DEMO = ("--identities", "2", "--frames", "8", "--width", "64", "--height", "48")


def copy_metrics(fixture: Fixture, folder: Path) -> Path:
    """A run folder holding only the three models' metrics.json, all that the report redraws from."""
    run, _ = fixture("all_run")
    for metrics in run.glob("*/metrics.json"):
        (folder / "run" / metrics.parent.name).mkdir(parents=True)
        shutil.copy(metrics, folder / "run" / metrics.parent.name)
    return folder / "run"


def bucket_store(fixture: Fixture) -> str:
    """The tiny store in a bucket of the test's S3 server: `cache verify` copies its shards to the local disk."""
    store = f"{fixture('bucket')}/tiny.zarr"
    Bucket(store).upload(fixture("tiny_cache"))
    return store


def evaluate(fixture: Fixture, folder: Path) -> list[str]:
    run, _ = fixture("all_run")
    return ["train.evaluate", "--run", str(run), "--cache", str(fixture("tiny_cache")), "--out", str(folder / "t")]


def predict(fixture: Fixture, folder: Path) -> list[str]:
    run, _ = fixture("all_run")
    videos = fixture("demo_root") / "Celeb-real"
    return ["train.predict", "--run", str(run / "simple_cnn"), str(videos), "--csv", str(folder / "p.csv")]


def explain(fixture: Fixture, folder: Path) -> list[str]:
    run, _ = fixture("all_run")
    rows = ("--cache", str(fixture("tiny_cache")), "--rows", "0", "1")
    return ["train.explain", "--run", str(run / "simple_cnn"), *rows, "--out", str(folder / "explain")]


def review(fixture: Fixture, folder: Path) -> list[str]:
    run, _ = fixture("all_run")
    return ["train.review", "--run", str(run), "--cache", str(fixture("tiny_cache")), "--port", str(free_port())]


def bench(fixture: Fixture, folder: Path) -> list[str]:
    out = ("--out", str(folder / "results"), "--markdown", str(folder / "RESULTS.md"))
    return ["bench", "run", "--data", str(fixture("demo_root")), "--quick", "--stages", "resize", *out]


# Each command on a small real input, writing into `folder`: (fixture, folder) -> its arguments.
COMMANDS: dict[str, Callable[[Fixture, Path], list[str]]] = {
    "ingest build-cache": lambda f, d: build_args(f("demo_root"), d / "s.zarr", "--workers", "1", "--frames", "4"),
    "ingest scan": lambda f, d: ["ingest", "scan", "--data-root", str(f("celebdf_root")), "--csv", str(d / "v.csv")],
    "ingest make-demo": lambda f, d: ["ingest", "make-demo", "--out", str(d / "demo"), *TINY_DEMO],
    "cache info": lambda f, d: ["cache", "info", str(f("tiny_cache"))],
    "cache verify": lambda f, d: ["cache", "verify", bucket_store(f), "--cache-dir", str(d / "shards")],
    "cache show": lambda f, d: ["cache", "show", str(f("tiny_cache")), "--out", str(d / "strip.png")],
    "train.tune": lambda f, d: [
        *["train.tune", "--cache", str(f("tiny_cache")), "--model", "simple_cnn", "--out", str(d / "tune")],
        *["--workers", "0", "--epochs", "1", "--trials", "2"],
    ],
    "train.evaluate": evaluate,
    "train.predict": predict,
    "train.explain": explain,
    "train.report": lambda f, d: ["train.report", str(copy_metrics(f, d))],
    "train.review": review,
    "bench": bench,
}
WRITES_NOTHING = {"cache info", "train.review"}  # they read and print (review serves a page): no disk to fill
# A build's SIGTERM is tested in the middle of its work, with the build that resumes it (test_resume.py), as are
# train/run.py's and train.features' full disk and SIGTERM (test_train.py, test_features.py): not again here, where
# their processes would add most of a minute to the suite.
SIGTERM_ELSEWHERE = {"ingest build-cache"}
# PyAV leaves open the video it could not finish (its process's end closes it), which would keep the tmpfs busy.
IN_A_PROCESS = {"ingest make-demo"}


def line_start(command: str) -> str:
    """The first word of a command's line: its program's (ingest, cache) or its module's (train.tune: tune)."""
    return command.split()[0].removeprefix("train.")


@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in WRITES_NOTHING])
def test_a_full_disk_ends_every_command_with_exit_4_and_one_line(command, request, small_disk):
    args = COMMANDS[command](request.getfixturevalue, small_disk.path)
    small_disk.fill()
    result = (run_process if command in IN_A_PROCESS else run_cli)(*args, check=False)
    assert result.returncode == 4, result.stderr
    one_line(result.stderr, f"{line_start(command)}: error: no space left on the device")


# Where a command prints before its work is under way, the sign that it is: it is signalled then, not at its
# first print. The others are signalled at their first print, after or near the end of their work.
UNDER_WAY: dict[str, Callable[[Path], bool]] = {
    "ingest make-demo": lambda d: any((d / "demo").rglob("*.mp4")),
    "train.tune": lambda d: any((d / "tune").glob("trial-*/simple_cnn")),  # a trial trains
    "bench": lambda d: "bench:" in (d / "stderr.txt").read_text(),  # its stages' progress bar
}


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in SIGTERM_ELSEWHERE])
def test_sigterm_ends_every_command_with_143_and_one_line(command, request, tmp_path):
    args = COMMANDS[command](request.getfixturevalue, tmp_path)
    under_way = UNDER_WAY.get(command)
    status, stderr = stopped_with_sigterm(args, tmp_path, None if under_way is None else lambda: under_way(tmp_path))
    assert status == 128 + signal.SIGTERM, stderr
    one_line(stderr, f"{line_start(command)}: interrupted: ")


PIPE_SIZE = 4096  # F_SETPIPE_SZ's least


def stopped_with_sigterm(args: list[str], folder: Path, under_way: Callable[[], bool] | None) -> tuple[int, str]:
    """Run `python -m args` with its stdout a full pipe, send it SIGTERM once its work is `under_way` (or else once
    it waits to print), and return its status and stderr (kept in folder/stderr.txt). Until the signal it cannot
    end: every command prints before it ends, and the pipe is kept full from the moment its work is under way."""
    read, write = os.pipe()
    fcntl.fcntl(read, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    os.set_blocking(read, False)
    # Our own way into the pipe, that does not wait: the process's stdout, the same pipe, must.
    filler = os.open(f"/proc/self/fd/{write}", os.O_WRONLY | os.O_NONBLOCK)
    fill(filler)
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}  # each print is written at once, where it stands
    errors = folder / "stderr.txt"
    with errors.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", *args], stdout=write, stderr=sink, env=environment)
    os.close(write)
    try:
        if under_way is None:
            wait_until(process, lambda: "pipe_write" in Path(f"/proc/{process.pid}/wchan").read_text())
        else:
            wait_until(process, under_way, lambda: drain(read))
            fill(filler)
        process.send_signal(signal.SIGTERM)
        wait_until(process, lambda: process.poll() is not None, lambda: drain(read))  # let it finish its print
    finally:
        process.kill()
        process.wait()
        os.close(read)
        os.close(filler)
    return process.returncode, errors.read_text()


def wait_until(process: subprocess.Popen, done: Callable[[], bool], meanwhile=lambda: None, limit: float = 180) -> None:
    deadline = time.monotonic() + limit
    while not done():
        assert process.poll() is None, "it ended before the signal"
        assert time.monotonic() < deadline, "it never got there"
        meanwhile()
        time.sleep(0.02)


def fill(filler: int) -> None:
    """Fill the pipe: the next print of the process writing into it waits."""
    try:
        while os.write(filler, bytes(PIPE_SIZE)):
            pass
    except BlockingIOError:
        pass


def drain(read: int) -> None:
    try:
        while os.read(read, 2**16):
            pass
    except BlockingIOError:
        pass
