"""Stage 3, report: cell records -> runs.csv, by_axis.csv, metrics.json and labelled grids.

    python stages/report.py [report.rows=steps report.cols=guidance ...]
"""

import sys
from pathlib import Path

from inpaint_sweep import cli
from inpaint_sweep.config import SWEEP_AXES, ConfigError, load_config
from inpaint_sweep.report import build_report


@cli.one_line_errors
def main(overrides: list[str]) -> None:
    cfg = load_config(overrides)
    for key in ("rows", "cols"):
        if cfg.report[key] not in SWEEP_AXES:
            raise ConfigError(f"report.{key}={cfg.report[key]!r} is not an axis; choose one of {', '.join(SWEEP_AXES)}")
    if cfg.report.rows == cfg.report.cols:
        raise ConfigError(f"report.rows and report.cols must differ, both are {cfg.report.rows!r}")
    summary = build_report(Path(cfg.paths.generate) / "cells", cfg.paths.report, cfg.report.rows, cfg.report.cols)
    print(
        f"report: {summary['cells']} cell(s), {summary['ok']} ok, {summary['failed']} failed, "
        f"{summary['grids']} grid(s) -> {cfg.paths.report}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
