"""Stage entry points report a bad input as one line and exit 2; HYDRA_FULL_ERROR=1 shows the traceback instead."""

from __future__ import annotations

import functools
import os
import sys

from .config import ConfigError

EXIT_BAD_INPUT = 2


def _config_exceptions() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return ConfigError, HydraException, OmegaConfBaseException


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def one_line_errors(func):
    """Turn ConfigError (and Hydra/OmegaConf config errors) into `error: <sentence>` and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except _config_exceptions() as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            fail(" ".join(str(e).split()))

    return wrapper
