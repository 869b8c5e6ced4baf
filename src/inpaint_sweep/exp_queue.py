"""Run DVC's experiment queue and exit 1 when a queued experiment failed (DVC itself exits 0 either way).

    python -m inpaint_sweep.exp_queue [-j N]   # `dvc exp run --run-all -j N`, then the verdict   (make queue)
    python -m inpaint_sweep.exp_queue --wait   # after your own `dvc queue start`: wait for it, then the verdict

`dvc exp run --run-all` prints "Failed to reproduce experiment(s)" and exits 0, and `dvc queue start` returns at once;
DVC 3.67 has no `dvc queue wait`. This waits until no experiment is queued or running, prints each one's status and
the end of each failed one's log (`dvc queue logs <name>` has all of it), and exits 1 if any failed. Which ones count:
the experiments queued when it starts; with --wait every queue experiment `dvc exp show` lists (those of the current
commit), finished ones included (a quick failure may be over before this starts), so an old failure counts until
`dvc queue remove --failed`. It reads DVC through its documented API only: `dvc.api.exp_show` and the `dvc` command.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

PENDING = ("Queued", "Running")
ORDER = ("Success", "Failed", "Running", "Queued")  # the order they were queued in, roughly: done, running, waiting
NO_WORKER_GRACE_S = 30  # how long queued experiments may sit with none running before we stop waiting
POLL_S = 5.0  # each look at the queue reads every experiment of the commit: not too often while they run


def queue_status(root: str = ".") -> dict[str, dict]:
    """The queue's experiments as `dvc exp show` lists them, by name: {name: {"name", "rev", "status"}}, status
    Queued, Running, Success or Failed; finished first, then running, then queued, each oldest first. An experiment
    no queue ran (a plain `dvc exp run`) has no status there and is left out."""
    import dvc.api

    rows = [row for row in dvc.api.exp_show(repo=root) if row.get("State")]
    rows = sorted(reversed(rows), key=lambda row: ORDER.index(row["State"]) if row["State"] in ORDER else len(ORDER))
    return {row["Experiment"] or row["rev"]: {"name": row["Experiment"], "rev": row["rev"], "status": row["State"]}
            for row in rows}  # reversed: `dvc exp show` lists each state's newest first


def wait(tasks: list[str], root: str = ".", poll_s: float = POLL_S) -> dict[str, dict]:
    """Block until none of `tasks` is queued or running; return their final entries, in the order of `tasks`."""
    idle_since = None
    while True:
        status = queue_status(root)
        pending = [t for t in tasks if status.get(t, {}).get("status") in PENDING]
        if not pending:
            return {t: status[t] for t in tasks if t in status}
        if any(entry["status"] == "Running" for entry in status.values()):
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > NO_WORKER_GRACE_S:
            raise SystemExit(f"error: {len(pending)} experiment(s) still queued and none running: start a queue "
                             "worker with `dvc queue start`")
        time.sleep(poll_s)


def _log_tail(task: dict, root: str, lines: int = 15) -> str:
    log = subprocess.run(["dvc", "queue", "logs", task["name"] or task["rev"]], cwd=root, capture_output=True,
                         text=True).stdout
    return "\n".join("    " + line for line in log.rstrip().splitlines()[-lines:])


def verdict(final: dict[str, dict], root: str = ".") -> int:
    """Print each experiment's status and the end of each failed one's log; 1 if any failed, else 0."""
    failed = [t for t in final.values() if t["status"] != "Success"]
    for task in final.values():
        print(f"{task.get('name') or task['rev'][:7]}: {task['status']}")
    for task in failed:
        name = task.get("name") or task["rev"][:7]
        print(f"\nerror: experiment {name} {task['status'].lower()}; the end of `dvc queue logs {name}`:",
              file=sys.stderr)
        print(_log_tail(task, root), file=sys.stderr)
    if failed:
        print(f"\nerror: {len(failed)} of {len(final)} queued experiment(s) failed", file=sys.stderr)
        return 1
    print(f"all {len(final)} queued experiment(s) succeeded")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-j", "--jobs", type=int, default=1, help="queue workers (experiments at once), default 1")
    parser.add_argument("--wait", action="store_true", help="do not start workers: wait for those already started")
    parser.add_argument("--root", default=".", help="the repository (default: the current directory)")
    args = parser.parse_args(argv)

    status = queue_status(args.root)
    tasks = list(status) if args.wait else [name for name, task in status.items() if task["status"] in PENDING]
    if not tasks:
        print("no queued experiments (queue some with `dvc exp run --queue -S ...`)")
        return 0
    if not args.wait:
        # Starts the workers and follows each experiment's log; its exit code says nothing about the experiments.
        subprocess.run(["dvc", "exp", "run", "--run-all", "--jobs", str(args.jobs)], cwd=args.root)
    return verdict(wait(tasks, args.root), args.root)


if __name__ == "__main__":
    sys.exit(main())
