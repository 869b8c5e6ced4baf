"""The two errors a stage reports as one line `error: <sentence>` (cli.one_line_errors): the user's fix differs.

- ConfigError, exit code 2: a bad value in the config, the command line, the manifest or an input image. Nothing ran;
  change the input.
- RunError, exit code 1: the input is fine but the run cannot go on here and now (another sweep holds the view, an
  earlier stage's outputs are missing or unreadable, the disk is full). Wait, run the earlier stage, or free space.
"""

import errno

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left on the device, or over quota


def no_space(error: BaseException) -> bool:
    """Whether an error is a full disk (or quota): a sweep stops on it and says so once, in one line."""
    return isinstance(error, OSError) and error.errno in DISK_FULL


class ConfigError(ValueError):
    """A bad value in the config or the manifest: reported as one line, exit code 2."""


class RunError(RuntimeError):
    """A runtime condition that stops the stage although its input is valid: reported as one line, exit code 1."""


class DiskFull(RunError):
    """No space left on the device (or over quota) writing `path`, the `role` it plays (cell store, view): the sweep
    stops before its next cell, and the launching process says in one line what was kept (`explain`)."""

    def __init__(self, path: str, role: str) -> None:
        super().__init__(path, role)  # the arguments: a job's DiskFull is pickled back to the launching process
        self.path, self.role = path, role

    def __str__(self) -> str:
        return f"no space left on device writing {self.path} ({self.role})"

    def explain(self, kept: int, not_run: int) -> str:
        return (f"{self}: {kept} cell{'s' * (kept != 1)} computed and kept, {not_run} not run; free space and run "
                "the same command again")
