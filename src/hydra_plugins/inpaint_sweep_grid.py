"""Hydra plugin: inpaint-sweep's grid sweeper, selected in params.yaml (`override hydra/sweeper: grid`).

Hydra's basic sweeper (same grid syntax, batches and launchers) with one change: job configs come from
`inpaint_sweep.sweep.GridConfigLoader`, which composes each distinct set of config-group choices once instead of the
whole config twice per job. Hydra only loads plugins from the `hydra_plugins` package, hence this module.
"""

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.types import HydraContext


class GridSweeper(BasicSweeper):
    def setup(self, *, hydra_context: HydraContext, task_function, config) -> None:
        from inpaint_sweep.sweep import GridConfigLoader

        loader = GridConfigLoader(hydra_context.config_loader.get_search_path())
        context = HydraContext(config_loader=loader, callbacks=hydra_context.callbacks)
        super().setup(hydra_context=context, task_function=task_function, config=config)

    def validate_batch_is_legal(self, batch) -> None:
        self.hydra_context.config_loader.check_batch(self.config, batch)
