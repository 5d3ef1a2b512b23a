"""Checkpoints: `best.safetensors`, the chosen model's weights, and `last/`, Accelerate's `save_state` of the run.

`last/` holds what `--resume` needs, as Accelerate writes and reads it: the weights (`model.safetensors`), the
optimiser (`optimizer.bin`), the GradScaler of an fp16 run (`scaler.pt`), each rank's RNG states
(`random_states_N.pkl`) and the objects registered for checkpointing, the progress record (`custom_checkpoint_0.pkl`)
and the scheduler (`custom_checkpoint_1.pkl`). Every rank saves into a staging folder that the main process swaps in
by renames once all have written, so a kill at any moment leaves one whole checkpoint. Nothing in it is unpickled
beyond plain data (torch's `weights_only`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import shutil
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from train.data import UsageError

PROGRESS = "custom_checkpoint_0.pkl"  # Accelerate numbers registered objects in order: the progress goes first
OLD_PROGRESS = "progress.json"  # the record of checkpoints written before `save_state`
NEARLY_FULL = 2**20  # free bytes: fewer than this after torch.save failed, it failed for want of space


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Serialised in memory and written as plain bytes, so that a full disk raises OSError (ENOSPC) as any
    other write does, not safetensors' own error."""
    data = save({name: tensor.detach().contiguous().cpu() for name, tensor in state.items()})
    _replace(path, lambda tmp: tmp.write_bytes(data))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def write_json(path: Path, value: dict) -> None:
    _replace(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2)))


def _replace(path: Path, write: Callable[[Path], object]) -> None:
    """`write` a temporary file beside `path`, then rename it into place; a failed write leaves nothing."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def checkpointing(accelerator: Accelerator, progress, scheduler) -> Iterator[None]:
    """What `save_state` and `load_state` carry besides the prepared model and optimiser, for one model's training.

    The scheduler is registered, not prepared: prepared, Accelerate would step it once per process, and not at all
    after an fp16 step the GradScaler skipped, where the run steps it once an epoch on the val loss. The hooks save
    and load the model unwrapped, so that a checkpoint of N processes resumes in any number of them. Accelerate's
    `free_memory` lets go of prepared objects, not of these, so they are let go of here, before the next model.
    """
    accelerator.register_for_checkpointing(progress, scheduler)
    hooks = [
        accelerator.register_save_state_pre_hook(partial(_save_unwrapped, accelerator)),
        accelerator.register_load_state_pre_hook(partial(_load_unwrapped, accelerator)),
    ]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        # Accelerate has no call that unregisters an object.
        mine = (progress, scheduler)
        accelerator._custom_objects = [o for o in accelerator._custom_objects if all(o is not m for m in mine)]


def _save_unwrapped(accelerator: Accelerator, models: list, weights: list, _folder: str) -> None:
    weights[:] = [accelerator.get_state_dict(model) for model in models]


def _load_unwrapped(accelerator: Accelerator, models: list, _folder: str) -> None:
    models[:] = [accelerator.unwrap_model(model) for model in models]


def save_last(folder: Path, accelerator: Accelerator) -> None:
    """Every rank's `save_state` into `folder`.new, then, once all have written, the main process swaps it in."""
    staging, old = _beside(folder, "new"), _beside(folder, "old")
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    _save_state(accelerator, staging)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        staging.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _save_state(accelerator: Accelerator, folder: Path) -> None:
    """`save_state`, with a full disk raised as OSError ENOSPC, as every other write of a command raises it."""
    try:
        accelerator.save_state(folder)
    except (SafetensorError, RuntimeError) as error:
        if _no_space(error, folder):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder)) from error
        raise


def _no_space(error: Exception, folder: Path) -> bool:
    """Whether `save_state`'s writers failed for want of space: safetensors' error names the OS error; torch.save's
    does not, but the write it failed filled the disk to its last blocks."""
    if isinstance(error, SafetensorError):
        return f"(os error {errno.ENOSPC})" in str(error)
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize < NEARLY_FULL


def find_last(folder: Path) -> Path | None:
    """The whole checkpoint: `last/`, or `last.old/` if a kill fell between the two renames."""
    for candidate in (folder, _beside(folder, "old")):
        if (candidate / PROGRESS).exists():
            return candidate
    return None


def read_progress(folder: Path) -> dict:
    """The progress record of the checkpoint in `folder`, read as plain data."""
    return torch.load(folder / PROGRESS, map_location="cpu", weights_only=True)


def load_last(folder: Path, accelerator: Accelerator) -> bool:
    """`load_state` from the last whole checkpoint; False if there is none.

    Accelerate unpickles the registered objects' states whole (`weights_only=False`), so each is first read with
    `weights_only=True`, which refuses a file that would run code. A checkpoint of the layout before `save_state`
    is refused in one line rather than read by a second loader kept for it alone.
    """
    last = find_last(folder)
    if last is None:
        for candidate in (folder, _beside(folder, "old")):
            if (candidate / OLD_PROGRESS).exists():
                raise UsageError(
                    f"--resume: {candidate} is a checkpoint of an earlier clipcache, which this one does not resume: "
                    "finish the run with that version, or train again without --resume"
                )
        return False
    for state in sorted(last.glob("custom_checkpoint_*.pkl")):
        try:
            torch.load(state, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise UsageError(f"--resume: {state} holds more than plain data; it is not loaded") from None
    accelerator.load_state(str(last))
    return True


def _beside(folder: Path, suffix: str) -> Path:
    return folder.with_name(f"{folder.name}.{suffix}")
