"""Faults and secrets: Comet down or refusing the key costs nothing, no key leaks, bad grids fail in a second."""

import http.server
import io
import json
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from conftest import run, stage_env

SENTINELS = {
    "COMET_API_KEY": "SENTINEL-comet-4f1c9a",
    "HF_TOKEN": "SENTINEL-hf-77d02e",
    "MY_SERVICE_KEY": "SENTINEL-service-1b3b5c",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generate(tmp, prepared, model_cache, *args, env):
    return run(["python", "stages/generate.py", "-m", *args, "hydra.sweeper.params.strength=1.0",
                "hydra.sweeper.params.steps=2", "hydra.sweeper.params.negative_prompt=''", "model.size=64",
                f"paths.prepare={prepared}", f"paths.generate={tmp}/gen", f"paths.cell_store={tmp}/store",
                f"hydra.sweep.dir={tmp}/gen/hydra", f"model.cache_dir={model_cache}"], env=env, check=False)


def everything_written(*roots: Path) -> bytes:
    """Every byte under the roots, with zip archives (Comet's) unpacked so compressed text is searchable too."""
    blob = io.BytesIO()
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                blob.write(data)
                if zipfile.is_zipfile(path):
                    with zipfile.ZipFile(path) as z:
                        for name in z.namelist():
                            blob.write(z.read(name))
                            if z.read(name)[:2] == b"PK":  # an archive inside (comet_ml's zipped git patch)
                                with zipfile.ZipFile(io.BytesIO(z.read(name))) as inner:
                                    blob.write(b"".join(inner.read(n) for n in inner.namelist()))
    return blob.getvalue()


def test_unreachable_comet_falls_back_to_offline_and_no_secret_leaks(tmp_path, prepared, model_cache):
    # A loopback port with nothing listening: the online path is taken (a key is set) and fails fast.
    env = stage_env(COMET_URL_OVERRIDE=f"http://127.0.0.1:{free_port()}/clientlib/", **SENTINELS)
    # tracking.git_patch: the uncommitted changes go too, and are searched (comet_ml zips them: unpacked below).
    result = generate(tmp_path, prepared, model_cache, "guidance=5,9", "hydra.output_subdir=.hydra",
                      "tracking.git_patch=true", env=env)
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).count("is unreachable") == 1  # one warning, not one per cell
    archives = list((tmp_path / "gen" / "comet").glob("*.zip"))
    assert len(archives) == 2
    records = [json.loads(p.read_text()) for p in (tmp_path / "gen" / "cells").glob("*/record.json")]
    assert len(records) == 2 and all(r["status"] == "ok" and r["comet"].endswith(".zip") for r in records)
    report = run(["python", "stages/report.py", f"paths.generate={tmp_path}/gen", f"paths.report={tmp_path}/rep",
                  "tracking.comet=false"], env=env)

    # Secrets: no sentinel in anything written (records, images, Hydra's saved configs and logs, Comet archives),
    # nor in what the stages printed.
    written = everything_written(tmp_path / "gen", tmp_path / "store", tmp_path / "rep")
    printed = (result.stdout + result.stderr + report.stdout + report.stderr).encode()
    assert (tmp_path / "gen" / "hydra" / "0" / ".hydra" / "config.yaml").is_file()  # Hydra's configs were searched
    for name, secret in SENTINELS.items():
        assert secret.encode() not in written, f"{name} leaked into the outputs"
        assert secret.encode() not in printed, f"{name} leaked into the log"


class _RefusingComet(http.server.BaseHTTPRequestHandler):
    """A Comet stand-in on loopback that rejects every API key."""

    seen: list[str] = []

    def do_GET(self):
        _RefusingComet.seen.append(self.path)
        self.send_response(401)
        self.end_headers()
        self.wfile.write(b'{"msg": "Invalid apiKey"}')

    do_POST = do_GET

    def log_message(self, *args):
        pass


def test_rejected_key_warns_once_and_logs_offline(tmp_path, prepared, model_cache):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusingComet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = stage_env(COMET_URL_OVERRIDE=f"http://127.0.0.1:{server.server_port}/clientlib/",
                        COMET_API_KEY="not-a-valid-key")
        result = generate(tmp_path, prepared, model_cache, "guidance=5", env=env)
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).count("rejected COMET_API_KEY (HTTP 401)") == 1
    # Asked once (comet_ml.API: its version check, then the account details), then nothing more went out.
    assert _RefusingComet.seen == ["/clientlib/isAlive/ver", "/api/rest/v2/account-details"]
    assert len(list((tmp_path / "gen" / "comet").glob("*.zip"))) == 1


class _FailingComet(_RefusingComet):
    """A Comet stand-in on loopback that answers every request with HTTP 503, which comet_ml normally retries."""

    seen: list[str] = []

    def do_GET(self):
        _FailingComet.seen.append(self.path)
        self.send_response(503)
        self.end_headers()

    do_POST = do_GET


def test_the_server_check_asks_once_without_comet_ml_retries(monkeypatch, caplog):
    """Pins the comet_ml setting the check relies on (COMET_HTTP_SESSION_RETRY_TOTAL): a server answering 503 is asked
    each thing once, and the check says so at once, instead of after comet_ml's retries and their back-off."""
    from inpaint_sweep import tracking

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FailingComet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("COMET_API_KEY", "key")
    monkeypatch.setenv("COMET_URL_OVERRIDE", f"http://127.0.0.1:{server.server_port}/clientlib/")
    tracking.server_accepts_key.cache_clear()
    try:
        assert tracking.server_accepts_key() is False
    finally:
        tracking.server_accepts_key.cache_clear()
        server.shutdown()
    assert _FailingComet.seen == ["/clientlib/isAlive/ver", "/api/rest/v2/account-details"]
    assert caplog.text.count("answered HTTP 503") == 1


@pytest.mark.parametrize(
    "override, words",
    [
        ("strength=0.5,1.5", "error: strength must be in (0, 1], got strength=1.5"),
        ("steps=1,4", "error: steps x strength must give at least one denoising step, got steps=1 strength=0.75"),
        ("seed=[1,1]", "error: seed list has duplicates, got seed=[1, 1]"),
        ("guidance=5,-3", "error: guidance must be >= 0, got guidance=-3"),
        ("steps=4,abc", "error: Value 'abc' of type 'str' could not be converted to Integer full_key: steps "
                        "object_type=Config"),
        ("guidanse=5", "error: Key 'guidanse' not in 'Config' full_key: guidanse object_type=Config"),
        ("+newkey=1", "error: unknown key 'newkey' in '+newkey=1': the typed config has no such key (nothing would "
                      "read it); see `python stages/generate.py --help` for the keys"),
        ("hydra/launcher=joblib hydra.launcher.n_jobs=0",
         "error: hydra.launcher.n_jobs must be >= 1 (or -1: one job per CPU core), got hydra.launcher.n_jobs=0"),
        ("model.device=cuda:7", "error: model.device=cuda:7 but this machine has no such CUDA device; use "
                                "model.device=auto or cpu"),
    ],
)
def test_bad_grid_value_stops_the_sweep_before_any_cell(tmp_path, override, words):
    result = run(["python", "stages/generate.py", "-m", *override.split(), "hydra.sweeper.params.strength='0.75,1.0'",
                  f"paths.generate={tmp_path}/gen", f"paths.cell_store={tmp_path}/store",
                  f"hydra.sweep.dir={tmp_path}/gen/hydra"], check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == words
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "store").exists()  # nothing ran


# Property tests of the config validator: it accepts exactly the settings diffusers can run.
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from inpaint_sweep.config import ConfigError, check_config, load_config  # noqa: E402

BASE = load_config()


@settings(max_examples=200, deadline=None)
@given(
    steps=st.integers(-3, 60),
    strength=st.floats(-0.5, 1.5, allow_nan=False),
    guidance=st.floats(-5, 30, allow_nan=False),
    seed=st.one_of(st.integers(-5, 2**31), st.lists(st.integers(-2, 50), min_size=0, max_size=5)),
)
def test_config_validator_accepts_exactly_the_runnable_settings(steps, strength, guidance, seed):
    cfg = BASE.copy()
    cfg.steps, cfg.strength, cfg.guidance, cfg.seed = steps, strength, guidance, seed
    seeds = seed if isinstance(seed, list) else [seed]
    runnable = (steps >= 1 and 0 < strength <= 1 and int(steps * strength) >= 1 and guidance >= 0
                and len(seeds) > 0 and all(s >= 0 for s in seeds) and len(set(seeds)) == len(seeds))
    try:
        check_config(cfg)
        accepted = True
    except ConfigError as e:
        accepted = False
        assert str(e).count("\n") == 0 and "=" in str(e)  # one line naming the key and its value
    assert accepted == runnable


# Safe loading: safetensors only unless the user opts in; the safety checker stays unless turned off.
from inpaint_sweep.config import model_config
from inpaint_sweep.model import load_model  # noqa: E402
from inpaint_sweep.tiny_model import build_tiny_pipeline  # noqa: E402


def test_pickle_checkpoint_is_refused_unless_opted_in(tmp_path):
    build_tiny_pipeline(0).save_pretrained(tmp_path / "pickled", safe_serialization=False)
    assert (tmp_path / "pickled" / "unet" / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(ConfigError) as e:
        load_model(model_config("pretrained", id=str(tmp_path / "pickled"), cache_dir=str(tmp_path), channels_last=False))
    assert "holds only pickle weights (.bin/.ckpt) for unet, vae, which can run arbitrary code" in str(e.value)
    assert "model.allow_unsafe_pickle=true" in str(e.value)
    model = load_model(model_config("pretrained", id=str(tmp_path / "pickled"), cache_dir=str(tmp_path), channels_last=False,
                       allow_unsafe_pickle=True))
    assert type(model.pipe).__name__ == "StableDiffusionInpaintPipeline"
    with pytest.raises(ConfigError, match="is not a .safetensors file; pickle checkpoints"):
        load_model(model_config("single_file", id=str(tmp_path / "model.ckpt"), cache_dir=str(tmp_path)))


def test_single_file_pickle_config_and_loader_agree(tmp_path):
    """A single file that is not .safetensors: the config check and the loader refuse it with the same sentence, and
    both let it load once model.allow_unsafe_pickle=true (the key their messages name)."""
    import torch
    from safetensors.torch import load_file

    from inpaint_sweep.tiny_model import save_config_folder, save_single_file

    pipe = build_tiny_pipeline(3)
    config = save_config_folder(pipe, tmp_path / "config")
    ckpt = tmp_path / "tiny.ckpt"  # the original layout, as a pickle: what model sharing sites used to publish
    torch.save({"state_dict": load_file(save_single_file(pipe, tmp_path / "tiny.safetensors"))}, ckpt)
    overrides = ["model=single_file", f"model.id={ckpt}", f"model.config={config}", "model.device=cpu"]
    settings = dict(id=str(ckpt), config=str(config), cache_dir=str(tmp_path), channels_last=False)
    with pytest.raises(ConfigError) as checked:
        check_config(load_config(overrides))
    with pytest.raises(ConfigError) as loading:
        load_model(model_config("single_file", **settings))
    assert str(checked.value) == str(loading.value)
    assert "is not a .safetensors file" in str(checked.value) and "model.allow_unsafe_pickle=true" in str(checked.value)
    check_config(load_config([*overrides, "model.allow_unsafe_pickle=true"]))
    model = load_model(model_config("single_file", allow_unsafe_pickle=True, **settings))
    ours, theirs = model.pipe.unet.state_dict(), pipe.unet.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_safety_checker_is_kept_unless_turned_off(tmp_path):
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    pipe = build_tiny_pipeline(0)
    tiny = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4)
    checker = StableDiffusionSafetyChecker(CLIPConfig(text_config=tiny, projection_dim=32,
                                                      vision_config={**tiny, "image_size": 32, "patch_size": 4}))
    pipe.register_modules(safety_checker=checker, feature_extractor=CLIPImageProcessor(size=32, crop_size=32))
    pipe.register_to_config(requires_safety_checker=True)
    pipe.save_pretrained(tmp_path / "ckpt", safe_serialization=True)
    kept = load_model(model_config("pretrained", id=str(tmp_path / "ckpt"), cache_dir=str(tmp_path), channels_last=False))
    assert type(kept.pipe.safety_checker).__name__ == "StableDiffusionSafetyChecker"
    dropped = load_model(model_config("pretrained", id=str(tmp_path / "ckpt"), cache_dir=str(tmp_path), channels_last=False,
                         safety_checker=False))
    assert dropped.pipe.safety_checker is None


def test_parallel_comet_logging_writes_only_sound_archives(tmp_path, photo):
    """The logger process writes experiments in parallel. comet_ml ends its global previous experiment whenever a new
    one is created in the same process; from parallel threads, that corrupted about 1 archive in 8. Every archive must
    open and pass its CRC checks, and each experiment's answer must name its own archive."""
    from inpaint_sweep import tracking

    photo.save(tmp_path / "out.png")
    logger = tracking.CometLogger()
    answers = [logger.submit({"offline_dir": str(tmp_path / "comet"), "online": False, "project": "p",
                              "workspace": None, "name": f"cell-{i}", "params": {"guidance": i},
                              "metrics": {"seconds": 1.0}, "tags": ["t"],
                              "images": {"output": str(tmp_path / "out.png")}}) for i in range(16)]
    logger.close()
    archives = [a.result(timeout=0) for a in answers]  # all answered by the time close() returns
    assert len(set(archives)) == 16
    for i, archive in enumerate(archives):
        with zipfile.ZipFile(archive) as z:
            assert z.testzip() is None, f"{archive} is corrupt"
            assert f"cell-{i}" in z.read("experiment.json").decode() + z.read("messages.json").decode()


def test_an_online_experiment_that_cannot_start_is_logged_offline(tmp_path, photo, monkeypatch, caplog):
    """Pins the one undocumented comet_ml attribute read (tracking.log_cell): an online experiment whose server does
    not answer has `alive` False, and the cell goes to a sound offline archive instead of a URL that leads nowhere."""
    from inpaint_sweep import tracking

    photo.save(tmp_path / "out.png")
    monkeypatch.setenv("COMET_API_KEY", "key")
    monkeypatch.setenv("COMET_URL_OVERRIDE", f"http://127.0.0.1:{free_port()}/clientlib/")
    monkeypatch.setenv("COMET_HTTP_SESSION_RETRY_TOTAL", "0")  # fail at once, not after comet_ml's retries
    monkeypatch.setenv("COMET_GET_OR_ADD_EXPERIMENT_RETRY_TOTAL", "0")
    where = tracking.log_cell(tmp_path / "comet", True, "p", None, "cell-0", {"guidance": 5}, {"seconds": 1.0}, ["t"],
                              {"output": str(tmp_path / "out.png")})
    assert "could not start online" in caplog.text
    assert where.endswith(".zip") and Path(where).parent == tmp_path / "comet"
    with zipfile.ZipFile(where) as z:
        assert z.testzip() is None and "cell-0" in z.read("messages.json").decode()


class _AcceptingComet(http.server.BaseHTTPRequestHandler):
    """A Comet stand-in on loopback that accepts the key (the uploads themselves are recorded by UPLOAD_RECORDER)."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"userName": "tester"}')

    def log_message(self, *args):
        pass


# What `comet upload` (run by the stage's logger) calls to send an archive, replaced in the stage's processes by one
# that records what it was asked to send (the real one speaks Comet's whole REST API, which no loopback stand-in here
# implements). The command itself runs for real: its arguments, its API key, its exit status.
UPLOAD_RECORDER = '''
import os, comet_ml.offline

def upload_single_offline_experiment(offline_archive_path, api_key, force_upload, **kwargs):
    with open(os.environ["UPLOAD_LOG"], "a") as f:
        f.write(offline_archive_path + "\\n")
    return True

comet_ml.offline.upload_single_offline_experiment = upload_single_offline_experiment
'''


def test_cells_logged_offline_are_uploaded_once_when_comet_is_reachable(tmp_path, prepared, model_cache):
    offline = generate(tmp_path, prepared, model_cache, "guidance=5,9", env=stage_env())
    assert offline.returncode == 0 and len(list((tmp_path / "gen" / "comet").glob("*.zip"))) == 2

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AcceptingComet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(UPLOAD_RECORDER)
    uploads = tmp_path / "uploads.log"
    env = stage_env(COMET_URL_OVERRIDE=f"http://127.0.0.1:{server.server_port}/clientlib/", COMET_API_KEY="key",
                    PYTHONPATH=str(tmp_path / "site"), UPLOAD_LOG=str(uploads))
    try:
        online = generate(tmp_path, prepared, model_cache, "guidance=5,9", env=env)
        again = generate(tmp_path, prepared, model_cache, "guidance=5,9", env=env)
    finally:
        server.shutdown()
    assert online.returncode == 0 and again.returncode == 0, online.stderr + again.stderr
    sent = uploads.read_text().splitlines()
    assert len(sent) == 2 and all(Path(p).name == "comet.zip" and (tmp_path / "store") in Path(p).parents
                                  for p in sent)  # each stored archive, once: the second run sent nothing
    records = [json.loads(p.read_text()) for p in (tmp_path / "gen" / "cells").glob("*/record.json")]
    assert all(r["comet_uploaded"] for r in records)


# Two kinds of error, two exit codes: a bad input (2) is fixed by changing it; a runtime condition (1) by waiting,
# running the earlier stage or freeing space.
import errno  # noqa: E402

from inpaint_sweep.cli import one_line_errors  # noqa: E402
from inpaint_sweep.config import RunError  # noqa: E402


@pytest.mark.parametrize("error, code, line", [
    (ConfigError("steps must be >= 1, got steps=0"), 2, "error: steps must be >= 1, got steps=0"),
    (RunError("another sweep (pid 1) is writing the view 'v'"), 1, "error: another sweep (pid 1) is writing the view 'v'"),
    (OSError(errno.ENOSPC, "No space left on device", "results/x.png"), 1,
     "error: no space left on the device writing 'results/x.png' (No space left on device); free some space and run "
     "again"),
])
def test_bad_input_exits_2_and_a_run_error_exits_1_in_one_line(error, code, line, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    @one_line_errors
    def stage():
        raise error

    with pytest.raises(SystemExit) as e:
        stage()
    assert e.value.code == code and capsys.readouterr().err == line + "\n"


def test_another_os_error_keeps_its_traceback(monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    @one_line_errors
    def stage():
        raise PermissionError(errno.EACCES, "Permission denied", "x")

    with pytest.raises(PermissionError):
        stage()


def test_a_held_view_lock_is_a_run_error(tmp_path):
    from inpaint_sweep.store import ViewLock

    first, second = ViewLock(tmp_path / "view"), ViewLock(tmp_path / "view")
    first.acquire()
    try:
        with pytest.raises(RunError, match=r"another sweep \(pid \d+, started .*\) is writing the view"):
            second.acquire()
    finally:
        first.release()
    second.acquire()  # free again
    second.release()


def test_missing_or_unreadable_prepare_outputs_are_a_run_error(tmp_path):
    from inpaint_sweep.records import load_prepared

    with pytest.raises(RunError, match="no prepared cases at .*: run `dvc repro prepare`"):
        load_prepared(tmp_path)
    (tmp_path / "cases.json").write_text('[{"id": "a"}]')
    with pytest.raises(RunError, match=r"are unreadable \(KeyError: 'image'\): run prepare again"):
        load_prepared(tmp_path)


def test_report_stage_exits_1_on_a_cut_off_cell_record(tmp_path, capsys, monkeypatch):
    """The stage itself, in process: generate's output is broken (not the input), so exit code 1 and one line."""
    import runpy

    from inpaint_sweep.config import REPO_ROOT

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    (tmp_path / "cells" / "c-1").mkdir(parents=True)
    (tmp_path / "cells" / "c-1" / "record.json").write_text('{"cell_id": "c-1", "sta')
    stage = runpy.run_path(str(REPO_ROOT / "stages" / "report.py"))
    with pytest.raises(SystemExit) as e:
        stage["main"]([f"paths.generate={tmp_path}", f"paths.report={tmp_path / 'report'}", "tracking.comet=false"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("error: cell record ") and err.count("\n") == 1


def test_a_failed_upload_raises_and_keeps_the_key_out_of_what_it_prints(tmp_path, monkeypatch, capfd):
    """`comet upload` failing (here: its sender says no, after printing the key) is an error, so the cell is not
    marked uploaded, and what the command printed is passed on with the key blanked out."""
    from inpaint_sweep import tracking

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "import os, sys, comet_ml.offline\n"
        "def refuse(offline_archive_path, api_key, force_upload, **kwargs):\n"
        "    print('sending with', os.environ['COMET_API_KEY'], file=sys.stderr)\n"
        "    return False\n"
        "comet_ml.offline.upload_single_offline_experiment = refuse\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    monkeypatch.setenv("COMET_API_KEY", SENTINELS["COMET_API_KEY"])
    (tmp_path / "comet.zip").write_bytes(b"")
    with pytest.raises(RuntimeError, match="comet upload .* exited 1"):
        tracking.upload_archive(str(tmp_path / "comet.zip"))
    printed = capfd.readouterr()
    assert "sending with ***" in printed.err and SENTINELS["COMET_API_KEY"] not in printed.out + printed.err


def test_a_dead_comet_logger_fails_each_log_at_once_and_the_cell_is_still_shown(tmp_path):
    """The Comet logger process dies mid-sweep (OOM killer, a crash in comet_ml): every experiment sent before or
    after fails with a reason instead of waiting forever, and the cell is still shown (logging never costs a cell)."""
    from omegaconf import OmegaConf

    from inpaint_sweep.logbook import CometLog
    from inpaint_sweep.records import CellRecord
    from inpaint_sweep.store import CellStore
    from inpaint_sweep.tracking import CometLogger

    logger = CometLogger()
    logger.start()
    pending = logger.submit({"upload": str(tmp_path / "none.zip")})  # sent, never to be answered
    logger._process.kill()
    with pytest.raises(RuntimeError, match="ended"):
        pending.result(timeout=60)
    with pytest.raises(RuntimeError, match="has ended"):
        logger.submit({"upload": str(tmp_path / "none.zip")}).result(timeout=60)
    logger.close()

    comet = CometLog(OmegaConf.create({"offline": True}), CellStore(tmp_path / "store"))
    comet.start()
    comet.logger._process.kill()
    shown = []
    done = comet.log(CellRecord(cell_id="case-0", case="case"), {"name": "case-0"}, lambda: shown.append(True))
    done.result(timeout=60)
    comet.close()
    assert shown == [True]
