"""The `h2d` stage: host-to-device copies, pinned and pageable."""

from __future__ import annotations

import torch

from bench.context import BenchConfig, Context
from bench.stores import read_clips
from bench.timing import MB, Rate, Row, skipped


def h2d(config: BenchConfig, context: Context) -> list[Row]:
    """Host-to-device copies: a training batch of clips, then 256 MiB and 1 GiB, where the link's rate shows."""
    if not torch.cuda.is_available():
        return [skipped("host to device", "GB/s, pinned and not", "no GPU on this machine")]
    clips = torch.from_numpy(read_clips(config, 4))
    sources = [(f"uint8 batch of 4 clips ({clips.numel() / MB:.0f} MiB)", clips, (False, True))]
    sources.append(("256 MiB", torch.empty(256 * MB, dtype=torch.uint8), (False, True)))
    sources.append(("1 GiB", torch.empty(1024 * MB, dtype=torch.uint8), (True,)))
    rows = []
    for what, tensor, pinnings in sources:
        for pinned in pinnings:
            rate = _copy_rate(tensor.pin_memory() if pinned else tensor, config.repeat)
            rows.append(Row("host to device", f"{what}, {'pinned' if pinned else 'pageable'}", rate))
    return rows


def _copy_rate(source: torch.Tensor, repeat: int) -> Rate:
    gigabytes = source.numel() * source.element_size() / 2**30
    target = torch.empty_like(source, device="cuda")

    def copy() -> float:
        target.copy_(source, non_blocking=True)
        torch.cuda.synchronize()
        return gigabytes

    return Rate.measure(copy, repeat, "GB/s")
