"""Results: a JSON file per run, a markdown table printed and appended to bench/RESULTS.md, and a bar chart."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
from importlib import metadata
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from bench.timing import Row  # noqa: E402
from cache.exits import BadInput  # noqa: E402

PACKAGES = ("torch", "av", "decord", "zarr", "h5py", "numpy", "opencv-python-headless", "timm", "accelerate")
RESULTS_MD = Path(__file__).with_name("RESULTS.md")


def machine() -> dict:
    import torch

    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "host": socket.gethostname(),
        "cpus": len(os.sched_getaffinity(0)),
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "versions": versions,
    }


def table(rows: list[Row]) -> str:
    lines = [
        "| stage | measures | ours | baseline (same run) | ours / baseline | limit (same run) | ours / limit | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        baseline = f"{row.baseline.text()}: {row.baseline_name}" if row.baseline else "—"
        limit = f"{row.limit.text()}: {row.limit_name}" if row.limit else "—"
        ratio = f"{row.versus_baseline:.2f}x" if row.versus_baseline is not None else "—"
        fraction = f"{row.of_limit:.2f}" if row.of_limit is not None else "—"
        ours = row.ours.text() if row.ours else "—"
        lines.append(
            f"| {row.stage} | {row.measures} | {ours} | {baseline} | {ratio} | {limit} | {fraction} | {row.note} |"
        )
    return "\n".join(lines)


def save(rows: list[Row], out: Path, settings: dict) -> tuple[Path, dict]:
    now = dt.datetime.now(dt.timezone.utc)
    facts = machine()
    record = {"date": now.isoformat(timespec="seconds"), "machine": facts, "settings": settings}
    record["rows"] = [row.as_dict() for row in rows]
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{now:%Y%m%dT%H%M%SZ}-{facts['host']}.json"
    path.write_text(json.dumps(record, indent=2))
    return path, record


def append_markdown(rows: list[Row], record: dict, results_md: Path = RESULTS_MD) -> None:
    facts = record["machine"]
    gpu = facts["gpu"] or "no GPU"
    heading = f"## {record['date']} — {facts['host']}: {facts['cpus']} CPU cores, {gpu}"
    settings = ", ".join(f"{k}={v}" for k, v in record["settings"].items())
    text = f"\n{heading}\n\nSettings: {settings}.\n\n{table(rows)}\n"
    if not results_md.exists():
        results_md.write_text("# bench results\n\nAppended by `python -m bench run`; newest last.\n")
    with results_md.open("a") as f:
        f.write(text)


def latest(out: Path) -> Path:
    files = sorted(out.glob("*.json"))
    if not files:
        raise BadInput(f"no results in {out}: run `python -m bench run` first")
    return files[-1]


def plot(results: Path, png: Path) -> Path:
    """Per row: ours / baseline and ours / limit, on a log scale (1 = equal)."""
    record = json.loads(results.read_text())
    rows = [row for row in record["rows"] if row["ours"]]
    labels = [f"{row['stage']}: {row['measures']}" for row in rows]
    figure = Figure(figsize=(11, 0.45 * len(rows) + 1.8))
    axes = figure.subplots()
    positions = range(len(rows))
    for offset, key, name in ((-0.2, "versus_baseline", "ours / baseline"), (0.2, "of_limit", "ours / limit")):
        values = [row[key] or 0 for row in rows]
        axes.barh([p + offset for p in positions], values, height=0.4, label=name)
    axes.axvline(1, color="black", linestyle="--", linewidth=1)
    axes.set_xscale("symlog", linthresh=1)
    axes.set_yticks(list(positions), labels, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("ratio (1 = the same rate)")
    axes.legend(loc="lower right")
    axes.set_title(f"clipcache bench, {record['date']}, {record['machine']['host']}")
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    return png
