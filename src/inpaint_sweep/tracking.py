"""Comet: one experiment per cell, logged by a separate process so writing archives never stalls generation.

Online when COMET_API_KEY is set (and tracking.offline is false); otherwise an offline archive (.zip) per cell in
the generate folder, uploadable later with `comet upload <zip>`. Comet's error tracking and auto-logging are off
(see offline.py), and nothing is sent anywhere without a key. It uses comet_ml's documented Python API and its
documented `comet upload` command; the few undocumented parts it still relies on say why where they are used, and a
test pins each.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from .errors import no_space

log = logging.getLogger(__name__)
os.environ.setdefault("COMET_LOGGING_CONSOLE", "WARNING")  # the stage prints one upload hint, not one per cell

WORKERS = 16  # experiments the logger process writes at once: each mostly waits, on the server or its writer thread


def is_online(offline_setting: bool) -> bool:
    """Log online only with a key, unless told not to, and only while the server answers and accepts the key."""
    return bool(os.environ.get("COMET_API_KEY")) and not offline_setting and server_accepts_key()


@functools.lru_cache(maxsize=1)
def server_accepts_key() -> bool:
    """Ask the Comet server once per process (`comet_ml.API().get_account_details()`) whether it is reachable and
    takes COMET_API_KEY.

    On failure: one warning, and every cell of this process goes to an offline archive instead (uploadable later).
    Asked without comet_ml's retries and with its console quiet: with them an unreachable server holds the stage up
    through a series of retries, each printing a warning, before the same answer.
    """
    import comet_ml
    import requests
    from comet_ml.exceptions import CometRestApiException  # what API() raises for an HTTP error (tests pin it)

    # COMET_HTTP_SESSION_RETRY_TOTAL: a comet_ml setting its reference does not list (Comet's cometx notes do);
    # there is no documented way to ask once. test_faults.py pins it: a failing server is asked once per request.
    with _environment(COMET_HTTP_SESSION_RETRY_TOTAL="0"), _quiet("comet_ml"):
        try:
            comet_ml.API().get_account_details()
        except requests.RequestException as e:
            server = _server(e.request.url if e.request is not None else "")
            log.warning("Comet server %s is unreachable (%s); logging to offline archives instead", server,
                        type(e).__name__)
            return False
        except CometRestApiException as e:
            server, status = _server(e.response.url), e.response.status_code
            if status in (401, 403):
                log.warning("Comet server %s rejected COMET_API_KEY (HTTP %d); logging to offline archives instead",
                            server, status)
            else:
                log.warning("Comet server %s answered HTTP %d; logging to offline archives instead", server, status)
            return False
    return True


def _server(url: str) -> str:
    """scheme://host:port of a URL: what a warning names."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else "(unknown)"


@contextlib.contextmanager
def _environment(**values: str):
    """Set environment variables for the duration of a block (comet_ml reads its settings from them when it
    builds a client)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _quiet(logger_name: str):
    """Silence a library's log for the duration of a block: this module says what went wrong, once."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


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
    others: dict | None = None,
    experiment_key: str | None = None,
    git: bool = False,
    git_patch: bool = False,
    html: str | None = None,
) -> str:
    """Create one experiment, log params, metrics, tags, other values, image files, assets and an HTML page, end it.
    Returns the archive path or URL. `experiment_key`: the key of an offline experiment, kept when its archive is
    uploaded (None: comet_ml picks one); an online experiment gets the server's key, the last part of its URL.
    `git`: send the git commit and branch (the caller asks git_remote_is_safe() once), `git_patch`: and the patch.

    comet_ml keeps one experiment alive per process (starting one ends the one before), so a process logs its
    experiments one after another; the logger process below runs several such processes.
    """
    options = dict(project=project, workspace=workspace, name=name, tags=tags, git=git, git_patch=git_patch)
    # comet_ml logs (with a traceback) what goes wrong as it starts or ends an experiment, and goes on: those errors
    # are kept, not printed, and the first one is raised if no sound archive comes of it (a full disk).
    with _errors_of("comet_ml") as errors:
        where = _log_experiment(online, offline_dir, options, params, metrics, images, assets, others, html,
                                experiment_key)
    if where.startswith("http"):
        return where
    archive = Path(where)
    if not archive.is_file() or not _sound_zip(archive):  # e.g. cut short by a full disk: never stored
        if errors:
            raise errors[0]
        raise RuntimeError(f"comet_ml wrote no offline archive {archive}")
    return str(archive)


def _log_experiment(online, offline_dir, options, params, metrics, images, assets, others, html,
                    experiment_key) -> str:
    # Online, a key chosen here would cost a request asking the server whether it is taken.
    experiment = start_experiment(online, offline_dir, experiment_key=None if online else experiment_key, **options)
    # `alive` is not in comet_ml's documentation, but it is the one sign comet_ml gives that an online experiment did
    # not start (the server stopped answering since the check); test_faults.py pins it.
    if online and not experiment.alive:
        log.warning("Comet experiment %s could not start online; logging it to an offline archive", options["name"])
        experiment.end()
        online = False
        experiment = start_experiment(False, offline_dir, experiment_key=experiment_key, **options)
    experiment.log_parameters(params)
    experiment.log_metrics(metrics)
    if others:
        experiment.log_others(others)
    for image_name, path in images.items():
        experiment.log_image(path, name=image_name)
    for file_name, path in (assets or {}).items():  # tables and other files, under their own names
        experiment.log_asset(path, file_name=file_name)
    if html:
        experiment.log_html(html)
    key = experiment.get_key()
    experiment.end()
    if online:
        return experiment.url
    return str(Path(offline_dir) / f"{key}.zip")  # the name comet_ml gives it (and prints in its upload hint)


def _sound_zip(path: Path) -> bool:
    """Whether a zip archive is whole: it opens and every member's CRC checks."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError):
        return False


@contextlib.contextmanager
def _errors_of(logger_name: str):
    """The exceptions a library logs during a block, kept instead of printed: the caller says what went wrong."""
    caught: list[BaseException] = []

    def keep(record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] == logger_name and record.exc_info and record.exc_info[1] is not None:
            caught.append(record.exc_info[1])
            return False
        return True

    # Filters on the handlers its records reach (a logger's own filter would not see its child loggers' records).
    handlers = logging.getLogger(logger_name).handlers + logging.getLogger().handlers
    for handler in handlers:
        handler.addFilter(keep)
    try:
        yield caught
    finally:
        for handler in handlers:
            handler.removeFilter(keep)


def start_experiment(online: bool, offline_dir: str | Path, project: str, workspace: str | None, name: str,
                     tags: list[str], experiment_key: str | None = None, git: bool = False, git_patch: bool = False):
    """A new Comet experiment (`comet_ml.start`, mode "create") that logs only what it is given, plus, with `git`, the
    git commit and branch (comet_ml's git logging, from this process's working directory) and, with `git_patch` too,
    the uncommitted changes."""
    import comet_ml

    if not online:
        Path(offline_dir).mkdir(parents=True, exist_ok=True)
    config = comet_ml.ExperimentConfig(
        name=name,
        tags=tags,
        offline_directory=None if online else str(offline_dir),
        display_summary_level=0,
        log_code=git and git_patch,  # comet_ml sends no patch without it (and no code file from a logger process)
        log_graph=False,
        parse_args=False,
        log_git_metadata=git,
        log_git_patch=git and git_patch,
        # Not comet_ml's environment logging: it probes cloud metadata servers over the network, lists every OS
        # package and samples the system in threads. Where the cell ran is its record's `machine`, sent as others.
        log_env_details=False,
        log_env_gpu=False,
        log_env_host=False,
        log_env_cpu=False,
        log_env_network=False,
        log_env_disk=False,
        auto_output_logging=False,
        auto_param_logging=False,
        auto_metric_logging=False,
        auto_log_co2=False,
    )
    return comet_ml.start(project_name=project, workspace=workspace, mode="create", online=online,
                          experiment_key=experiment_key, experiment_config=config)


@functools.lru_cache(maxsize=1)
def git_remote_is_safe() -> bool:
    """Whether comet_ml's git logging may run here: it sends the `origin` remote's URL as it is, and a URL such as
    https://user:token@host/repo (or https://token@host/repo) carries a credential. Such a remote: one warning, and
    no git metadata is sent. Asked once per process, by whoever logs (the logger's workers are told)."""
    from urllib.parse import urlsplit

    try:
        url = subprocess.run(["git", "config", "--get", "remote.origin.url"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return True  # no git here: comet_ml finds no repository and sends nothing
    parts = urlsplit(url)
    if parts.password is not None or (parts.scheme in ("http", "https") and parts.username):
        log.warning("the git remote 'origin' URL holds a credential; git metadata is not sent to Comet")
        return False
    return True


# The logger: a child process (`python -c "...serve()"`) fed one JSON line per experiment on its stdin, and
# answering one JSON line per experiment on its stdout ({"id", "where"} or {"id", "error"}). A separate process, not a
# thread, so Comet's Python work never competes with generation for the GIL. It writes nothing of ours: the sweep
# runner stores each archive with its cell and writes the record (records.py), once the answer comes. It hands each
# experiment to a pool of worker processes, one experiment at a time each (comet_ml's rule), forked from a server that
# imported comet_ml once.


LOGGER_MAIN = "import sys; from inpaint_sweep.tracking import serve; sys.exit(serve())"


class LoggerEnded(RuntimeError):
    """An experiment the logger process can no longer log: it has ended (said once, when it ended)."""


def _end_group(pgid: int) -> None:
    """Kill what is left of the logger's process group (nothing, when it ended normally)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class CometLogger:
    """The parent's end of the logger process; owned by the sweep runner. `submit` returns a Future of where the
    experiment went (an archive path or a URL)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process = None
        self._pending: dict[int, Future] = {}
        self._next = 0
        self._reader = None
        self._ended = False  # the process has ended: nothing sent from now on would be answered

    def start(self) -> None:
        """Start the process now (it starts its workers, which import comet_ml) so it is ready when the first cell
        is."""
        with self._lock:
            if self._process is None:
                # `-c`, not `-m inpaint_sweep.tracking`: a worker process would import a `-m` module a second time.
                # A process group of its own (its forkserver and workers join it), so that when the process dies
                # (the OOM killer, a crash in comet_ml) the helpers it leaves behind can be ended with it: orphaned,
                # they would wait forever and hold the stage's stderr open, and whatever reads it would wait too.
                self._process = subprocess.Popen([sys.executable, "-c", LOGGER_MAIN], stdin=subprocess.PIPE,
                                                 stdout=subprocess.PIPE, text=True, start_new_session=True)
                self._reader = threading.Thread(target=self._read, args=(self._process,), daemon=True,
                                                name="comet-answers")
                self._reader.start()

    def submit(self, job: dict) -> Future:
        """Log one experiment (log_cell's keyword arguments) or, with `upload`, upload one offline archive."""
        self.start()
        future: Future = Future()
        with self._lock:
            if self._ended:
                future.set_exception(LoggerEnded("the Comet logger process has ended"))
                return future
            self._next += 1
            self._pending[self._next] = future
            try:
                self._process.stdin.write(json.dumps({**job, "id": self._next}) + "\n")
                self._process.stdin.flush()
            except OSError as e:  # the process is gone (its reader fails what it had not answered)
                self._pending.pop(self._next)
                future.set_exception(LoggerEnded(f"the Comet logger process has ended ({e})"))
        return future

    def _read(self, process) -> None:
        for line in process.stdout:
            answer = json.loads(line)
            with self._lock:
                future = self._pending.pop(answer["id"])
            if answer.get("errno"):
                future.set_exception(OSError(answer["errno"], answer["error"], answer["filename"]))
            elif answer.get("error"):
                future.set_exception(RuntimeError(answer["error"]))
            else:
                future.set_result(answer["where"])
        with self._lock:  # the process ended: whatever it did not answer failed, and so will what comes next
            pending, self._pending, self._ended = self._pending, {}, True
        code = process.wait()
        if code != 0 or pending:  # it died (a normal end answers everything and ends its helpers itself)
            _end_group(process.pid)  # its forkserver and workers
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            log.warning("the Comet logger process ended (%s) with %d experiment(s) unlogged: their cells are kept, "
                        "and the next run of the same command logs every cell not logged yet", how, len(pending))
        for future in pending.values():
            future.set_exception(LoggerEnded("the Comet logger process ended before logging this experiment"))

    def close(self) -> None:
        """Wait until every experiment sent is answered, then let the process end."""
        with self._lock:
            process, self._process = self._process, None
        if process is None:
            return
        try:
            process.stdin.close()
        except OSError:  # the process is gone already
            pass
        process.wait()
        self._reader.join()


def upload_archive(archive: str) -> str:
    """Upload an offline archive with comet_ml's documented command (`comet upload <archive>`, run as
    `python -m comet_ml.scripts.comet_upload` with this Python, as comet_ml's command-line page shows); returns when
    (UTC). comet_ml documents no Python function for this.

    On failure the command's own account of why goes to stderr, with the API key blanked out, and this raises.
    """
    done = subprocess.run([sys.executable, "-m", "comet_ml.scripts.comet_upload", archive], capture_output=True,
                          text=True)
    if done.returncode != 0:
        said = done.stdout + done.stderr
        key = os.environ.get("COMET_API_KEY")
        sys.stderr.write(said.replace(key, "***") if key else said)
        raise RuntimeError(f"`comet upload {archive}` exited {done.returncode}")
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def answer(job: dict) -> dict:
    """In a worker process: log one experiment, or upload one archive; where it went, or why it did not."""
    try:
        if "upload" in job:
            return {"where": f"uploaded:{upload_archive(job['upload'])}"}
        return {"where": log_cell(**job)}
    except Exception as e:  # noqa: BLE001 - tracking must never cost a computed cell
        if isinstance(e, OSError) and e.errno is not None:  # a full disk stops the sweep: its parent must tell
            return {"error": str(e.strerror or e), "errno": e.errno, "filename": e.filename or job.get("offline_dir")}
        return {"error": f"{type(e).__name__}: {e}"}


def _worker_start() -> None:
    """A logger worker: Ctrl-C is the stage's to handle; an object's failed clean-up on a full disk (a half-written
    zip file) is not printed, since the error it follows is answered."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def unraisable(info) -> None:
        if not no_space(info.exc_value):
            sys.__unraisablehook__(info)

    sys.unraisablehook = unraisable


def serve(workers: int = WORKERS) -> int:
    """The logger process: log each experiment read from stdin, several at once, answering each on stdout."""
    logging.basicConfig(format="[comet logger][%(levelname)s] %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the stage; what it already sent is still logged
    answers, answers_lock = os.fdopen(os.dup(sys.stdout.fileno()), "w"), threading.Lock()
    # Anything else printed to stdout, here, in the workers or by `comet upload`, goes to stderr: not among the answers.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def reply(job_id: int, done: Future) -> None:
        try:
            message = {"id": job_id, **done.result()}
        except Exception as e:  # noqa: BLE001 - a worker process died: this experiment failed, the next may not
            message = {"id": job_id, "error": f"{type(e).__name__}: {e}"}
        with answers_lock:
            answers.write(json.dumps(message) + "\n")
            answers.flush()

    # Workers are forked from a server that imported comet_ml once; each logs one experiment at a time, and several
    # experiments overlap their waits. They ignore Ctrl-C, like this process.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["comet_ml", "inpaint_sweep.tracking"])
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start) as pool:
        pool.submit(os.getpid)  # start the server and a worker now, not when the first experiment comes
        for line in sys.stdin:
            if not line.strip():
                continue
            job = json.loads(line)
            job_id = job.pop("id")
            try:
                done = pool.submit(answer, job)
            except Exception as e:  # noqa: BLE001 - the pool broke: answer, and keep reading
                done = Future()
                done.set_exception(e)
            done.add_done_callback(functools.partial(reply, job_id))
    return 0
