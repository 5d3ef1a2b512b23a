"""Checkpoints written atomically by the main process and read without unpickling anything.

`best.safetensors` holds the chosen model's weights. `last/` holds what `--resume` needs: the weights
(safetensors), the optimiser and scheduler states (torch.save, read back with weights_only=True) and the
trainer's progress (JSON). A new `last/` is written beside the old one and swapped in by renames, so a
kill at any moment leaves one whole checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save


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


def save_last(folder: Path, model: dict, optimizer: dict, scheduler: dict, progress: dict) -> None:
    staging, old = folder.with_name(f"{folder.name}.new"), folder.with_name(f"{folder.name}.old")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_weights(staging / "model.safetensors", model)
    torch.save({"optimizer": optimizer, "scheduler": scheduler}, staging / "optimizer.pt")
    write_json(staging / "progress.json", progress)
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    staging.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def find_last(folder: Path) -> Path | None:
    """The whole checkpoint: `last/`, or `last.old/` if a kill fell between the two renames."""
    for candidate in (folder, folder.with_name(f"{folder.name}.old")):
        if (candidate / "progress.json").exists():
            return candidate
    return None


def load_last(folder: Path) -> tuple[dict, dict, dict, dict]:
    """(model weights, optimiser state, scheduler state, progress)."""
    states = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    progress = json.loads((folder / "progress.json").read_text())
    return load_weights(folder / "model.safetensors"), states["optimizer"], states["scheduler"], progress
