"""The grid sweeper (src/hydra_plugins/inpaint_sweep_grid.py) passes Hydra's own plugin test suites, and a failing job
is reported as under Hydra's basic sweeper."""

from pathlib import Path

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.test_utils.launcher_common_tests import BatchedSweeperTestSuite, IntegrationTestSuite, LauncherTestSuite
from hydra.test_utils.test_utils import run_python_script


from hydra_plugins.inpaint_sweep_grid import GridSweeper


@pytest.fixture(autouse=True)
def _hydra_version_base_unset():
    """Hydra's suites run their apps as a fresh process would, with no version base chosen yet; a test earlier in
    the session that composed our config (version_base="1.3") leaves it set, and the suites' apps then no longer
    chdir into their output folders."""
    from hydra.core.singleton import Singleton
    from hydra.version import VersionBase

    before = VersionBase.instance()
    Singleton._instances.pop(VersionBase)  # the next VersionBase.instance() is a fresh, unset one
    yield
    VersionBase.set_instance(before)


def test_discovery():
    assert GridSweeper.__name__ in [x.__name__ for x in Plugins.instance().discover(Sweeper)]


@pytest.mark.parametrize("launcher_name, overrides", [("basic", ["hydra/sweeper=inpaint_sweep_grid"])])
class TestBasicLauncherWithGridSweeper(LauncherTestSuite):
    pass


@pytest.mark.parametrize(
    "launcher_name, overrides", [("basic", ["hydra/sweeper=inpaint_sweep_grid", "hydra.sweeper.max_batch_size=2"])])
class TestGridSweeperWithBatching(BatchedSweeperTestSuite):
    pass


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [({"defaults": [{"override hydra/sweeper": "inpaint_sweep_grid"},
                    {"override hydra/hydra_logging": "hydra_debug"},
                    {"override hydra/job_logging": "disabled"}]}, ["-m"])],
)
class TestGridSweeperIntegration(IntegrationTestSuite):
    pass


def test_a_failing_job_is_reported_as_hydra_reports_it(tmp_path):
    """Hydra's own partial-failure check (hydra tests/test_basic_launcher.py), with the grid sweeper: the first two
    jobs run, the failing one's error is printed with Hydra's short traceback, and the command fails."""
    import hydra

    app = Path(hydra.__file__).parent.parent / "tests" / "test_apps" / "app_can_fail" / "my_app.py"
    if not app.is_file():  # the wheel ships no test apps: the same app, as Hydra's test writes it
        app = tmp_path / "my_app.py"
        app.write_text(_APP_CAN_FAIL)
    out, err = run_python_script([str(app), "--multirun", "+divisor=1,0", "hydra/sweeper=inpaint_sweep_grid",
                                  f"hydra.sweep.dir={tmp_path}", "hydra.job.chdir=True", "hydra/hydra_logging=disabled"],
                                 allow_warnings=True, raise_exception=False)
    assert "val: 1.0" in out
    lines = err.strip().splitlines()
    assert lines[0] == "Error executing job with overrides: ['+divisor=0']", err
    assert "Traceback (most recent call last):" in err and "ZeroDivisionError: division by zero" in err
    assert "hydra/" not in err and "inpaint_sweep_grid" not in err, "Hydra's and the sweeper's frames must be cut"
    assert "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace." in err


_APP_CAN_FAIL = """
import logging

import hydra
from omegaconf import DictConfig

log = logging.getLogger(__name__)


@hydra.main(version_base=None)
def my_app(cfg: DictConfig) -> None:
    val = 1 / cfg.divisor
    log.info(f"val: {val}")


if __name__ == "__main__":
    my_app()
"""
