"""`python -m train.report RUN_DIR ...`: a finished run's reports drawn again from its metrics, by `train.reporting`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cache.exits import BadInput, Ending, ends
from train.reporting import (
    baseline_sentence,
    format_comparison,
    load_results,
    runs_side_by_side,
    write_comparison,
    write_model_report,
)


@ends("report")
def main(argv: Sequence[str] | None, ending: Ending) -> int:
    """Redraw every report of finished runs without retraining: python -m train.report RUN_DIR [RUN_DIR ...];
    with several runs, a table of them side by side follows."""
    parser = argparse.ArgumentParser(prog="python -m train.report", description=main.__doc__)
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="run_dir")
    args = parser.parse_args(argv)
    runs = {}
    for run_dir in args.run_dirs:
        results = load_results(run_dir)
        if not results:
            raise BadInput(f"no */metrics.json under {run_dir}")
        ending.where, ending.kept = run_dir, f"{run_dir}'s reports may be part drawn; run the same command again"
        for metrics in results:
            write_model_report(run_dir / metrics["model"], metrics)
        write_comparison(run_dir, results)
        print(f"{run_dir}:\n{format_comparison(results)}\n\n{baseline_sentence(results)}\n")
        runs[run_dir.name] = results
    if len(runs) > 1:
        print(f"side by side:\n{runs_side_by_side(runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
