"""The experiment table, narrow enough for a terminal: what `dvc exp show --only-changed` shows, minus the noise.

    python -m inpaint_sweep.exp_table [dvc exp show options: -A, -n 5, --rev <exp>, --hide-queued, ...]   (make exps)

`dvc exp show` has a column per key of params.yaml and per dependency hash (84 here), and names each by its full path
(`hydra.sweeper.params.guidance`, `mean.change_inside_mae`), so even with `--only-changed` a 160-column terminal shows
the metrics and cuts the grid values to "…". This reads `dvc exp show --json` and prints the params and the report's
metrics whose values differ between the rows shown (no dependency hashes, dates or executors), each column named by its
last key unless two would share it. A failed or unfinished experiment shows no metrics (DVC shows its baseline's).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from .identity import flatten

FINISHED = ("-", "success")  # the workspace and commits ("-"), and experiments that ran to the end


def _files(section: dict | None) -> dict:
    """{file: {"data": {...}}} -> one flat dict of keys (params.yaml, metrics.json)."""
    return {k: v for entry in (section or {}).values() for k, v in flatten(entry.get("data") or {}).items()}


def _row(entry: dict, label: str, state: str) -> dict:
    data = entry.get("data") or {}
    row = {"Experiment": label, "State": state}
    if state in FINISHED:
        row.update({("metric", k): v for k, v in _files(data.get("metrics")).items()})
    row.update({("param", k): v for k, v in _files(data.get("params")).items()})
    return row


def rows(exp_show: list[dict]) -> list[dict]:
    """One row per workspace, commit and experiment of `dvc exp show --json`, experiments under their baseline."""
    out = []
    for commit in exp_show:
        label = commit.get("name") or (commit["rev"] if commit["rev"] == "workspace" else commit["rev"][:7])
        out.append(_row(commit, label, "-"))
        for group in commit.get("experiments") or []:
            executor = group.get("executor") or {}
            for exp in group["revs"]:
                state = executor.get("state") or ("failed" if exp.get("error") else "-")
                label = f"{exp['rev'][:7]} [{exp['name']}]" if exp.get("name") else exp["rev"][:7]
                out.append(_row(exp, f"  {label}", state))
    return out


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.5g}"
    return value if isinstance(value, str) else json.dumps(value)


def table(exp_show: list[dict], width: int = 160) -> str:
    """The rows, with the param and metric columns whose values differ between rows (metrics first), in at most
    `width` columns: the grid's params always; metrics from the right are left out (and named) until it fits."""
    body = rows(exp_show)
    keys = list(dict.fromkeys(k for row in body for k in row if isinstance(k, tuple)))
    keys.sort(key=lambda k: k[0] != "metric")  # stable: metrics, then params, each in file order
    changed = [k for k in keys if len({_cell(row[k]) for row in body if row.get(k) is not None}) > 1]
    left_out = []
    while True:
        text = _render(body, changed)
        metrics = [k for k in changed if k[0] == "metric"]
        if max(map(len, text.splitlines())) <= width or not metrics:
            break
        changed.remove(metrics[-1])
        left_out.insert(0, metrics[-1][1])
    if left_out:
        note = f"(left out to fit {width} columns: {', '.join(left_out)}; `dvc exp show --json` has them)"
        text += "\n" + "\n".join(textwrap.wrap(note, width))
    return text


def _render(body: list[dict], changed: list[tuple]) -> str:
    short = [k[1].rsplit(".", 1)[-1] for k in changed]
    headers = ["Experiment", "State"] + [s if short.count(s) == 1 else k[1] for s, k in zip(short, changed)]
    cells = [[row["Experiment"], row["State"]] + [_cell(row.get(k)) for k in changed] for row in body]
    widths = [max(len(line[i]) for line in [headers, *cells]) for i in range(len(headers))]
    numeric = [i >= 2 and changed[i - 2][0] == "metric" for i in range(len(headers))]
    lines = [[c.rjust(w) if num else c.ljust(w) for c, w, num in zip(line, widths, numeric)]
             for line in [headers, *cells]]
    return "\n".join("  ".join(line).rstrip() for line in lines)


def main(argv: list[str]) -> int:
    shown = subprocess.run(["dvc", "exp", "show", "--json", *argv], capture_output=True, text=True)
    if shown.returncode:
        sys.stderr.write(shown.stderr)
        return shown.returncode
    import shutil

    print(table(json.loads(shown.stdout), width=shutil.get_terminal_size((160, 24)).columns))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
