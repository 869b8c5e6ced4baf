"""The grid launcher and sweeper (src/hydra_plugins/inpaint_sweep_grid.py) pass Hydra's own plugin test suites."""

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.test_utils.launcher_common_tests import BatchedSweeperTestSuite, IntegrationTestSuite, LauncherTestSuite


from hydra_plugins.inpaint_sweep_grid import GridLauncher, GridSweeper


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
    assert GridLauncher.__name__ in [x.__name__ for x in Plugins.instance().discover(Launcher)]
    assert GridSweeper.__name__ in [x.__name__ for x in Plugins.instance().discover(Sweeper)]


@pytest.mark.parametrize("launcher_name, overrides", [("inpaint_sweep_grid", [])])
class TestGridLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize("launcher_name, overrides", [("inpaint_sweep_grid", ["hydra/sweeper=inpaint_sweep_grid"])])
class TestGridLauncherWithGridSweeper(LauncherTestSuite):
    pass


@pytest.mark.parametrize(
    "launcher_name, overrides",
    [("inpaint_sweep_grid", ["hydra/sweeper=inpaint_sweep_grid", "hydra.sweeper.max_batch_size=2"])],
)
class TestGridSweeperWithBatching(BatchedSweeperTestSuite):
    pass


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [({"defaults": [{"override hydra/launcher": "inpaint_sweep_grid"},
                    {"override hydra/sweeper": "inpaint_sweep_grid"},
                    {"override hydra/hydra_logging": "hydra_debug"},
                    {"override hydra/job_logging": "disabled"}]}, ["-m"])],
)
class TestGridPluginsIntegration(IntegrationTestSuite):
    pass
