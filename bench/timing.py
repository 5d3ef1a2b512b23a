"""Rates measured over repeats after a warm-up, or taking turns, reported as median with min and max."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

MB = 2**20  # the MB of every MB/s and MiB in the rows


@dataclass(frozen=True)
class Rate:
    median: float
    low: float
    high: float
    unit: str

    @classmethod
    def measure(cls, work: Callable[[], float], repeat: int, unit: str, warmup: int = 1) -> Rate:
        """`work` does one unit of work and returns how many items it handled."""
        for _ in range(warmup):
            work()
        rates = []
        for _ in range(repeat):
            started = time.perf_counter()
            items = work()
            rates.append(items / (time.perf_counter() - started))
        return cls(statistics.median(rates), min(rates), max(rates), unit)

    @classmethod
    def of_seconds(cls, seconds_per_item: float, unit: str) -> Rate:
        """A derived limit (no spread of its own)."""
        rate = 1 / seconds_per_item
        return cls(rate, rate, rate, unit)

    def scaled(self, factor: float, unit: str) -> Rate:
        return Rate(self.median * factor, self.low * factor, self.high * factor, unit)

    def text(self) -> str:
        return f"{_number(self.median)} {self.unit} ({_number(self.low)}-{_number(self.high)})"

    def as_dict(self) -> dict:
        return asdict(self)


def taking_turns(works: dict[str, Callable[[], float]], repeat: int, unit: str) -> dict[str, Rate]:
    """Each work's rate over `repeat` rounds in which every work runs once, in turn."""
    rates: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(repeat):
        for name, work in works.items():
            started = time.perf_counter()
            items = work()
            rates[name].append(items / (time.perf_counter() - started))
    return {name: Rate(statistics.median(r), min(r), max(r), unit) for name, r in rates.items()}


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


@dataclass(frozen=True)
class Row:
    """One line of the results table: our rate beside the baseline's and the limit's, from the same run."""

    stage: str
    measures: str
    ours: Rate | None
    baseline: Rate | None = None
    baseline_name: str = ""
    limit: Rate | None = None
    limit_name: str = ""
    note: str = ""

    @property
    def versus_baseline(self) -> float | None:
        return self.ours.median / self.baseline.median if self.ours and self.baseline else None

    @property
    def of_limit(self) -> float | None:
        return self.ours.median / self.limit.median if self.ours and self.limit else None

    def as_dict(self) -> dict:
        return {
            "stage": self.stage,
            "measures": self.measures,
            "ours": self.ours.as_dict() if self.ours else None,
            "baseline": self.baseline.as_dict() if self.baseline else None,
            "baseline_name": self.baseline_name,
            "limit": self.limit.as_dict() if self.limit else None,
            "limit_name": self.limit_name,
            "versus_baseline": self.versus_baseline,
            "of_limit": self.of_limit,
            "note": self.note,
        }


def skipped(stage: str, measures: str, why: str) -> Row:
    """A stage that cannot run here says so in its row."""
    return Row(stage, measures, None, note=f"not run: {why}")
