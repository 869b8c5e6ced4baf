"""Comet: one experiment per cell, logged by a separate process so writing archives never stalls generation.

Online when COMET_API_KEY is set (and tracking.offline is false); otherwise an offline archive (.zip) per cell in
the generate folder, uploadable later with `comet upload <zip>`. Comet's error tracking and auto-logging are off
(see offline.py), and nothing is sent anywhere without a key.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .images import write_json

log = logging.getLogger(__name__)
os.environ.setdefault("COMET_LOGGING_CONSOLE", "WARNING")  # the stage prints one upload hint, not one per cell

_LOCK = threading.Lock()


def is_online(offline_setting: bool) -> bool:
    """Log online only with a key, unless told not to, and only while the server answers and accepts the key."""
    return bool(os.environ.get("COMET_API_KEY")) and not offline_setting and server_accepts_key()


@functools.lru_cache(maxsize=1)
def server_accepts_key(timeout: float = 5.0) -> bool:
    """Ask the Comet server once per process whether it is reachable and takes COMET_API_KEY.

    On failure: one warning, and every cell of this process goes to an offline archive instead (uploadable later).
    Without this check comet_ml retries each call for about 30 s and prints tracebacks.
    """
    import requests
    from comet_ml.config import get_comet_url_override
    from comet_ml.utils import get_root_url

    root = get_root_url(get_comet_url_override(None))
    try:
        response = requests.get(
            f"{root}/api/rest/v2/account-details",
            headers={"Authorization": os.environ["COMET_API_KEY"]},
            timeout=timeout,
        )
    except requests.RequestException as e:
        log.warning("Comet server %s is unreachable (%s); logging to offline archives instead", root, type(e).__name__)
        return False
    if response.status_code in (401, 403):
        log.warning("Comet server %s rejected COMET_API_KEY (HTTP %d); logging to offline archives instead",
                    root, response.status_code)
        return False
    if not response.ok:
        log.warning("Comet server %s answered HTTP %d; logging to offline archives instead", root, response.status_code)
        return False
    return True


def log_cell(
    offline_dir: str | Path,
    online: bool,
    project: str,
    workspace: str | None,
    name: str,
    params: dict,
    metrics: dict,
    tags: list[str],
    images: dict[str, str],
    assets: dict[str, str] | None = None,
) -> str:
    """Create one experiment, log params, metrics, tags and image files, end it. Returns the archive path or URL."""
    settings = dict(
        project_name=project,
        workspace=workspace,
        log_code=False,
        log_graph=False,
        auto_param_logging=False,
        auto_metric_logging=False,
        parse_args=False,
        auto_output_logging=False,
        log_env_details=False,
        log_git_metadata=False,
        log_git_patch=False,
        log_env_gpu=False,
        log_env_host=False,
        log_env_cpu=False,
        display_summary_level=0,
    )
    experiment = _create_experiment(online, offline_dir, settings)
    if online and not experiment.alive:  # the server stopped answering since the check: keep the log offline
        log.warning("Comet experiment %s could not start online; logging it to an offline archive", name)
        online = False
        experiment = _create_experiment(False, offline_dir, settings)
    experiment.set_name(name)
    experiment.add_tags(tags)
    experiment.log_parameters(params)
    experiment.log_metrics(metrics)
    for image_name, path in images.items():
        experiment.log_image(path, name=image_name)
    for file_name, path in (assets or {}).items():  # tables and other files, under their own names
        experiment.log_asset(path, file_name=file_name)
    key = experiment.get_key()
    experiment.end()
    if online:
        return experiment.url
    return str(Path(offline_dir) / f"{key}.zip")


_CREATE_LOCK = threading.Lock()


def _create_experiment(online: bool, offline_dir, settings: dict):
    """Create an experiment safely while other threads log theirs.

    comet_ml keeps one global "current" experiment and, on creating a new one, ends the previous one from the
    creating thread. With experiments logged in parallel that ends another thread's experiment while it is still
    being written (seen here as a corrupt offline archive), so creation is serialised and the global cleared first.
    """
    import comet_ml
    from comet_ml.config import set_global_experiment

    with _CREATE_LOCK:
        set_global_experiment(None)
        if online:
            return comet_ml.Experiment(**settings)
        Path(offline_dir).mkdir(parents=True, exist_ok=True)
        experiment = comet_ml.OfflineExperiment(offline_directory=str(offline_dir), **settings)
        # Its writer thread polls its queue once a second, so end() waits up to a second after the last message:
        # a second added to every sweep's end. Poll more often (read on each poll; missing in other versions: no-op).
        streamer = getattr(experiment, "streamer", None)
        if streamer is not None and hasattr(streamer, "queue_timeout"):
            streamer.queue_timeout = 0.05
        return experiment


# The logger: a child process (`python -m inpaint_sweep.tracking`) fed one JSON line per experiment on its stdin.
# A separate process, not a thread, so Comet's Python work never competes with generation for the GIL; and since it
# outlives a crash of the stage (it finishes what it was sent once its stdin closes), nothing sent is lost.
_LOGGER: dict = {"process": None}


def start_logger() -> None:
    """Start the logger now (it imports comet_ml, about a second) so it is ready when the first cell finishes."""
    with _LOCK:
        if _LOGGER["process"] is None:
            _LOGGER["process"] = subprocess.Popen(
                [sys.executable, "-m", "inpaint_sweep.tracking"], stdin=subprocess.PIPE, text=True
            )


def submit(job: dict) -> None:
    """Hand one experiment (log_cell's keyword arguments, plus `records`: record.json files to note where the log
    went) to the logger process."""
    start_logger()
    with _LOCK:
        _LOGGER["process"].stdin.write(json.dumps(job) + "\n")
        _LOGGER["process"].stdin.flush()


def flush() -> int:
    """Wait until every experiment sent is logged; return how many failed (the logger warns once for each)."""
    with _LOCK:
        process, _LOGGER["process"] = _LOGGER["process"], None
    if process is None:
        return 0
    process.stdin.close()
    return process.wait()  # the logger exits with its number of failures (capped at 100)


def _log_and_note(job: dict) -> None:
    records = job.pop("records", [])
    where = log_cell(**job)
    where = where if where.startswith("http") else os.path.relpath(where)
    for path in records:  # each record learns where its Comet log went
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        write_json({**record, "comet": where}, path)


def _serve() -> int:
    """The logger process: log each experiment read from stdin, several at once; at end of input, wait for all."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the stage; what it already sent is still logged
    failed = 0
    # Several at once: an experiment spends most of its time waiting (on the server, or on comet_ml's writer thread),
    # so parallel experiments overlap those waits.
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="comet-log") as pool:
        futures = [pool.submit(_log_and_note, json.loads(line)) for line in sys.stdin if line.strip()]
        for future in futures:
            try:
                future.result()
            except Exception as e:  # tracking must never cost a computed cell
                failed += 1
                log.warning("comet logging failed: %s", e)
    return min(failed, 100)


if __name__ == "__main__":
    logging.basicConfig(format="[comet logger][%(levelname)s] %(message)s")
    sys.exit(_serve())
