"""What `bench/gpu_check.sh` measures beyond the bench: `python -m bench.gpu_check env|compare ...`.

`env` says what this machine has (versions, which decoders start here and why not); `compare` holds a GPU
build to the PyAV build of the same videos row by row, and exits 1 where they differ: another frame, another
colour, a row one decoded and the other did not, or a GPU row that fell back to PyAV.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from cache import open_store
from cache.schema import OK
from ingest.decoders import DECODERS, choose, unavailable
from ingest.decoding import DecodeError

MODULES = ("torch", "torchvision", "timm", "accelerate", "h5py", "zarr", "numcodecs", "matplotlib", "av", "decord")
GPU_MODULES = ("PyNvVideoCodec", "nvidia.dali")
MAX_MEAN_DIFFERENCE = 3.0  # grey levels, per channel over every ok clip: the GPU tests' bound


def environment() -> list[str]:
    """One line per fact: torch and its GPU, each module's version or why it does not import, each decoder."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    lines = [f"torch {torch.__version__}, CUDA {torch.version.cuda}, {gpu}"]
    for name in (*MODULES, *GPU_MODULES):
        try:
            lines.append(f"{name} {getattr(importlib.import_module(name), '__version__', '?')}")
        except Exception as error:
            lines.append(f"{name} does not import: {type(error).__name__}: {' '.join(str(error).split())[:200]}")
    try:
        lines.append(choose("auto")[1])
    except DecodeError as error:
        lines.append(f"decoder auto: {error}")
    lines += [f"decoder {name}: {unavailable(name) or 'starts here'}" for name in DECODERS]
    return lines


def compare(cpu_path: Path, gpu_path: Path) -> dict:
    """The GPU store beside the PyAV store of the same videos: counts, and the rows that differ."""
    with open_store(cpu_path) as cpu, open_store(gpu_path) as gpu:
        if cpu.path.tolist() != gpu.path.tolist():
            return {"problems": ["the stores hold different videos"]}
        both = np.flatnonzero((cpu.status == OK) & (gpu.status == OK))
        fell_back = np.intersect1d(gpu.fell_back(), both)
        frames_differ = [int(row) for row in both if (cpu.frame_index[row] != gpu.frame_index[row]).any()]
        differences = [_difference(cpu.read([row])[0], gpu.read([row])[0]) for row in both]
        per_channel = np.mean(differences, axis=0) if differences else np.zeros(3)
        status_differs = np.flatnonzero(cpu.status != gpu.status).tolist()
        result = {
            "decoder": gpu.spec.decoder,
            "rows": len(gpu.path),
            "ok_in_both": len(both),
            "status_differs": [str(gpu.path[row]) for row in status_differs],
            "frame_index_differs": [str(gpu.path[row]) for row in frames_differ],
            "fell_back": {str(gpu.path[row]): str(gpu.error[row]).partition(": ")[2] for row in fell_back},
            "mean_abs_difference_rgb": [round(float(value), 3) for value in per_channel],
            "worst_rows": _worst(gpu.path[both], differences),
        }
    result["problems"] = _problems(result)
    return result


def _difference(cpu: np.ndarray, gpu: np.ndarray) -> np.ndarray:
    """Mean absolute difference of one clip, per channel."""
    return np.abs(cpu.astype(np.int16) - gpu.astype(np.int16)).reshape(-1, 3).mean(axis=0)


def _worst(paths: np.ndarray, differences: list[np.ndarray], count: int = 5) -> dict[str, float]:
    means = [float(d.mean()) for d in differences]
    return {str(paths[i]): round(means[i], 3) for i in np.argsort(means)[::-1][:count]}


def _problems(result: dict) -> list[str]:
    problems = []
    for key, what in (("status_differs", "rows decoded by one build only"), ("frame_index_differs", "other frames")):
        if result[key]:
            problems.append(f"{len(result[key])} {what}")
    if result["fell_back"]:
        problems.append(f"{len(result['fell_back'])} of {result['ok_in_both']} rows fell back to PyAV")
    if max(result["mean_abs_difference_rgb"]) > MAX_MEAN_DIFFERENCE:
        problems.append(f"mean absolute difference per channel {result['mean_abs_difference_rgb']}")
    return problems


def markdown(result: dict) -> str:
    verdict = "; ".join(result["problems"]) or "same frames, same colours, no fallback"
    lines = [f"## {result.get('decoder', 'GPU')} store vs PyAV store: {verdict}", ""]
    lines += [f"- {key}: {json.dumps(value)}" for key, value in result.items() if key not in ("decoder", "problems")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("env", help="versions and which decoders start here")
    comparing = commands.add_parser("compare", help="a GPU store row by row beside the PyAV store of the same videos")
    comparing.add_argument("cpu", type=Path, help="the PyAV store")
    comparing.add_argument("gpu", type=Path, help="the GPU decoder's store")
    comparing.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    if args.command == "env":
        print("\n".join(environment()))
        return 0
    result = compare(args.cpu, args.gpu)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result) if "decoder" in result else f"## stores differ: {result['problems']}\n"
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
