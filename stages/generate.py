"""Stage 2, generate: one Hydra job per combination of settings, one cell (images + record) per case.

    python stages/generate.py                      # one cell per case, settings from params.yaml
    python stages/generate.py -m                   # the grid in params.yaml (hydra.sweeper.params); what dvc runs
    python stages/generate.py -m guidance=5,7.5,12 # replace one axis of that grid
"""

import gc
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from inpaint_sweep import cli, runner, sweep


@hydra.main(version_base="1.3", config_path="../conf", config_name="params")  # params.yaml: see config.py
@cli.one_line_errors
def main(cfg: DictConfig) -> None:
    runner.current(cfg, sweep.sweep_id()).run_job(cfg, tuple(HydraConfig.get().overrides.task))


def summarize(run: runner.SweepRunner, interrupted: bool) -> int:
    """Print the sweep's summary lines; return the exit code."""
    if any((run.view / "comet").glob("*.zip")):
        print(f"Comet: offline archives in {run.view}/comet/; upload them with: comet upload {run.view}/comet/*.zip")
    c = run.counts
    print(f"generate: {c['done']} computed, {c['skipped']} reused from the cell store, {c['failed']} failed"
          + (" (interrupted: what was computed is kept)" if interrupted else ""))
    if interrupted:
        return 130
    if run.failed:
        print(f"error: {len(run.failed)} cell(s) failed: {', '.join(run.failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sweep.precheck_command_line(sys.argv[1:])
    interrupted = False
    try:
        main()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        finished = runner.finish(completed=not interrupted and sys.exc_info()[0] is None)
    code = summarize(finished, interrupted) if finished else 0
    gc.freeze()  # exit without Python's final full collection of every job's config (0.7 s at 384 jobs)
    sys.exit(code)
