"""The store lock between real processes: refused while held, taken over from a killed holder."""

import os
import signal

import psutil
import pytest
from conftest import lock_holder

from cache.lock import StoreLock, StoreLocked


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of tmp_path/s.zarr until its stdin closes."""
    with lock_holder(StoreLock, str(tmp_path / "s.zarr")) as process:
        yield process


def test_a_second_process_is_refused_with_the_holders_pid(tmp_path, holder):
    with pytest.raises(StoreLocked, match=f"s.zarr is being written by process {holder.pid} on "):
        StoreLock(tmp_path / "s.zarr").acquire()


def test_a_lock_left_by_a_killed_holder_is_taken_over_and_named(tmp_path, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "s.zarr.lock").exists()
    with StoreLock(tmp_path / "s.zarr") as lock:
        assert lock.taken_over is not None and lock.taken_over.pid == holder.pid
    assert not (tmp_path / "s.zarr.lock").exists()


def test_a_killed_holders_forked_child_does_not_keep_its_lock(tmp_path):
    """A build's decode workers, orphaned by a kill and still finishing a video, leave the lock free."""
    with lock_holder(StoreLock, str(tmp_path / "s.zarr"), fork=True) as holder:
        (child,) = psutil.Process(holder.pid).children()
        try:
            holder.kill()
            holder.wait()
            assert child.is_running()
            with StoreLock(tmp_path / "s.zarr") as lock:
                assert lock.taken_over.pid == holder.pid
        finally:
            child.kill()


def test_a_released_lock_is_free_and_names_no_previous_holder(tmp_path):
    for _ in range(2):
        with StoreLock(tmp_path / "s.zarr") as lock:
            assert lock.taken_over is None
            assert f'"pid": {os.getpid()}' in (tmp_path / "s.zarr.lock").read_text()


def test_a_lock_that_cannot_be_written_on_a_full_disk_is_let_go(small_disk):
    """The build ends (exit 4), and its process, which may run on (a test's, a notebook's), no longer holds it."""
    store = small_disk.path / "s.zarr"
    filler = small_disk.fill()
    with pytest.raises(OSError, match="No space left"):
        StoreLock(store).acquire()
    filler.unlink()
    with lock_holder(StoreLock, str(store)):
        pass
