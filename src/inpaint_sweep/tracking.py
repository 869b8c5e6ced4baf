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
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path


log = logging.getLogger(__name__)
os.environ.setdefault("COMET_LOGGING_CONSOLE", "WARNING")  # the stage prints one upload hint, not one per cell

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


# The logger: a child process (`python -m inpaint_sweep.tracking`) fed one JSON line per experiment on its stdin, and
# answering one JSON line per experiment on its stdout ({"id", "where"} or {"id", "error"}). A separate process, not a
# thread, so Comet's Python work never competes with generation for the GIL. It writes nothing of ours: the sweep
# runner stores each archive with its cell and writes the record (records.py), once the answer comes.


class CometLogger:
    """The parent's end of the logger process; owned by the sweep runner. `submit` returns a Future of where the
    experiment went (an archive path or a URL)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process = None
        self._pending: dict[int, Future] = {}
        self._next = 0
        self._reader = None

    def start(self) -> None:
        """Start the process now (it imports comet_ml, about a second) so it is ready when the first cell is."""
        with self._lock:
            if self._process is None:
                self._process = subprocess.Popen([sys.executable, "-m", "inpaint_sweep.tracking"],
                                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                self._reader = threading.Thread(target=self._read, args=(self._process,), daemon=True,
                                                name="comet-answers")
                self._reader.start()

    def submit(self, job: dict) -> Future:
        """Log one experiment (log_cell's keyword arguments) or, with `upload`, upload one offline archive."""
        self.start()
        future: Future = Future()
        with self._lock:
            self._next += 1
            self._pending[self._next] = future
            self._process.stdin.write(json.dumps({**job, "id": self._next}) + "\n")
            self._process.stdin.flush()
        return future

    def _read(self, process) -> None:
        for line in process.stdout:
            answer = json.loads(line)
            with self._lock:
                future = self._pending.pop(answer["id"])
            if answer.get("error"):
                future.set_exception(RuntimeError(answer["error"]))
            else:
                future.set_result(answer["where"])
        with self._lock:  # the process ended: whatever it did not answer failed
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(RuntimeError("the Comet logger process ended before logging this experiment"))

    def close(self) -> None:
        """Wait until every experiment sent is answered, then let the process end."""
        with self._lock:
            process, self._process = self._process, None
        if process is None:
            return
        process.stdin.close()
        process.wait()
        self._reader.join()


def upload_archive(archive: str) -> str:
    """Upload an offline archive with comet_ml's own offline uploader; returns the experiment's key."""
    from comet_ml.offline import upload_single_offline_experiment
    from comet_ml.offline_utils import extract_experiment_key_from_offline_file

    if not upload_single_offline_experiment(archive, os.environ["COMET_API_KEY"], force_upload=False,
                                            display_level="error"):
        raise RuntimeError(f"comet_ml did not upload {archive}")
    return extract_experiment_key_from_offline_file(archive)


def _answer(job: dict) -> dict:
    job_id = job.pop("id")
    try:
        if "upload" in job:
            return {"id": job_id, "where": f"uploaded:{upload_archive(job['upload'])}"}
        return {"id": job_id, "where": log_cell(**job)}
    except Exception as e:  # noqa: BLE001 - tracking must never cost a computed cell
        return {"id": job_id, "error": f"{type(e).__name__}: {e}"}


def _serve() -> int:
    """The logger process: log each experiment read from stdin, several at once, answering each on stdout."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the stage; what it already sent is still logged
    out, out_lock = sys.stdout, threading.Lock()
    sys.stdout = sys.stderr  # comet_ml's own prints must not mix with the answers

    def work(line: str) -> None:
        answer = _answer(json.loads(line))
        with out_lock:
            out.write(json.dumps(answer) + "\n")
            out.flush()

    # Several at once: an experiment spends most of its time waiting (on the server, or on comet_ml's writer thread),
    # so parallel experiments overlap those waits.
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="comet-log") as pool:
        for line in sys.stdin:
            if line.strip():
                pool.submit(work, line)
    return 0


if __name__ == "__main__":
    logging.basicConfig(format="[comet logger][%(levelname)s] %(message)s")
    sys.exit(_serve())
