"""Stage 1, prepare: image + box -> mask, overlay and record per case.  Usage: python stages/prepare.py [key=value ...]"""

import sys

from inpaint_sweep import cli
from inpaint_sweep.cases import load_cases
from inpaint_sweep.config import check_config, load_config
from inpaint_sweep.masks import prepare


@cli.one_line_errors
def main(overrides: list[str]) -> None:
    cfg = load_config(overrides)
    check_config(cfg)
    cases = load_cases(cfg.cases)
    records = prepare(
        cases, cfg.paths.prepare, cfg.mask.method, cfg.mask.weights, cfg.mask.conf, cfg.mask.overlay_alpha
    )
    print(f"prepare: {len(records)} case(s) -> {cfg.paths.prepare} (mask.method={cfg.mask.method})")


if __name__ == "__main__":
    main(sys.argv[1:])
