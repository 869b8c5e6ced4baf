"""The two errors a stage reports as one line `error: <sentence>` (cli.one_line_errors): the user's fix differs.

- ConfigError, exit code 2: a bad value in the config, the command line, the manifest or an input image. Nothing ran;
  change the input.
- RunError, exit code 1: the input is fine but the run cannot go on here and now (another sweep holds the view, an
  earlier stage's outputs are missing or unreadable, the disk is full). Wait, run the earlier stage, or free space.
"""


class ConfigError(ValueError):
    """A bad value in the config or the manifest: reported as one line, exit code 2."""


class RunError(RuntimeError):
    """A runtime condition that stops the stage although its input is valid: reported as one line, exit code 1."""
