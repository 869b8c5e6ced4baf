"""What a person sees in Comet, as a loopback Comet stand-in receives it from comet_ml's own client: `comet upload` of
the offline archives, and the online client with a key. Readable names, typed parameters without placeholders, git
metadata, the generation time, the report's contents and links, the sweep's saved view; where each cell ran, kept out
of its identity; no credential in git metadata."""

from __future__ import annotations

import email.parser
import gzip
import http.server
import io
import json
import subprocess
import threading
import zipfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from conftest import FIXED_GRID, generate, run, stage_env, view

PLACEHOLDERS = ("(default)", "(none)", "[]", "{}")
# Keys that said one thing twice (issue #22): each setting is now one parameter.
DUPLICATES = ("mask_method", "model_id", "model_revision", "model.source", "model.seed")


class CometStandIn(http.server.BaseHTTPRequestHandler):
    """Answers comet_ml's client as Comet's server does, as far as logging, uploading and saving a view need, and
    records every request (JSON bodies decoded, gzip included; uploaded files by their query parameters)."""

    received: list[dict]

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        request = {"method": self.command, "path": url.path, "query": query}
        kind = self.headers.get("Content-Type") or ""
        if kind.startswith("multipart/"):
            message = email.parser.BytesParser().parsebytes(f"Content-Type: {kind}\r\n\r\n".encode() + body)
            request["file"] = next(p.get_payload(decode=True) for p in message.get_payload()
                                   if p.get_param("name", header="content-disposition") == "file")
        elif body:
            request["json"] = json.loads(body)
        self.received.append(request)
        port = self.server.server_address[1]
        answer, status = {}, 200
        if url.path.endswith("/isAlive/ver"):
            answer = {"msg": "ok", "version": "3.0.0"}
        elif url.path.endswith("/account-details"):
            answer = {"userName": "tester", "defaultWorkspaceName": "ws"}
        elif url.path.endswith("/logger/add/run"):
            key = request["json"]["experimentKey"]
            answer = {"runId": f"run-{key}", "project_id": "proj-1", "experimentKey": key,
                      "focusUrl": f"http://127.0.0.1:{port}/ws/{request['json']['projectName']}/"}
        elif url.path.endswith("/status-report/update"):
            answer = {"is_alive_beat_duration_millis": 60000, "gpu_monitor_interval_millis": 60000,
                      "cpu_monitor_interval_millis": 60000, "parameter_update_interval_millis": 60000,
                      "pending_rpcs": False}
        elif url.path.endswith("/api/rest/v2/project"):
            answer = {"projectId": "proj-1", "projectName": query.get("projectName"), "workspaceName": "ws"}
        elif url.path.endswith("/write/views/upsert"):
            answer = {**request["json"], "templateId": "view-1"}
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(answer).encode())

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def comet_server():
    """(URL for COMET_URL_OVERRIDE, the list of requests it received)."""
    received: list[dict] = []
    handler = type("Handler", (CometStandIn,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/clientlib/", received
    server.shutdown()


def experiments(received: list[dict]) -> dict[str, dict]:
    """What the server holds per experiment key, as its pages would show it."""
    out: dict[str, dict] = {}

    def of(key):
        return out.setdefault(key, {"params": {}, "param_posts": [], "metrics": {}, "others": {}, "tags": [],
                                    "images": {}, "assets": {}, "git": None, "html": "", "times": None})

    for r in received:
        body, path, q = r.get("json") or {}, r["path"], r["query"]
        if path.endswith("/batch/logger/experiment/parameter"):
            for v in body["values"]:
                of(body["experimentKey"])["params"][v["parameterName"]] = v["parameterValue"]
                of(body["experimentKey"])["param_posts"].append(v["parameterName"])
        elif path.endswith("/batch/logger/experiment/metric"):
            of(body["experimentKey"])["metrics"].update({v["metricName"]: v["metricValue"] for v in body["values"]})
        elif path.endswith("/write/experiment/log-other"):
            of(body["experimentKey"])["others"][body["key"]] = body["value"]
        elif path.endswith("/tags/add-tags-to-experiment"):
            of(body["experimentKey"])["tags"] += body["addedTags"]
        elif path.endswith("/write/experiment/git/metadata"):
            of(body["experimentKey"])["git"] = body
        elif path.endswith("/write/experiment/html"):
            of(body["experimentKey"])["html"] += body["html"]
        elif path.endswith("/status-report/offline-metadata"):
            of(body["experimentKey"])["times"] = (body["startTimestamp"], body["endTimestamp"])
        elif path.endswith("/visualizations/upload"):
            of(q["experimentId"])["images"][q["figName"]] = (q["extension"], r["file"])
        elif path.endswith("/asset/upload"):
            of(q["experimentId"])["assets"][q["fileName"]] = r["file"]
    return out


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()


def check_cell_experiment(sent: dict, record: dict, axes: list[str]) -> None:
    """One cell's experiment as received: readable name, typed parameters each once, git, time, machine, outputs."""
    names = {"negative_prompt": "neg"}
    shown = " · ".join([record["case"], *(f"{names.get(a, a)}={record[a] if record[a] != '' else '(none)'}"
                                          for a in axes)])
    assert sent["others"]["Name"] == shown.replace("=5.0", "=5").replace("=9.0", "=9")
    assert {"kind:cell", f"sweep:{record['sweep_id']}", f"cell:{record['cell_id']}"} <= set(sent["tags"])
    params = sent["params"]
    assert params["cell_id"] == record["cell_id"] and params["guidance"] == record["guidance"]
    assert isinstance(params["guidance"], float) and isinstance(params["steps"], int)
    assert params["model.id"] == "builtin/tiny-sd-inpaint" and params["model.revision"] == "v2-seed0"
    assert params["model.device"] == "cpu"  # the device used, not `auto`
    assert not [k for k, v in params.items() if v in PLACEHOLDERS or v is None], params
    assert not set(DUPLICATES) & set(params) and len(sent["param_posts"]) == len(set(sent["param_posts"]))
    # Code: the commit and branch through comet_ml's git logging; the commit (and -dirty) also as code_version.
    assert sent["git"]["parent"] == git("rev-parse", "HEAD") and params["code_version"].startswith(git("rev-parse",
                                                                                                        "HEAD"))
    assert sent["git"]["branch"] == git("symbolic-ref", "-q", "HEAD")
    # Time: the generation time, as a metric Comet charts; where it ran, as others.
    seconds = [e["metrics"]["seconds"] for e in record["images"]]
    assert sent["metrics"]["generation_seconds"] == pytest.approx(sum(seconds), abs=1e-3) and seconds[0] > 0
    assert sent["others"]["machine.cpu_capability"] == record["machine"]["cpu_capability"]
    assert sent["others"]["machine.libraries.torch"] == record["machine"]["libraries"]["torch"]
    assert json.loads(sent["assets"]["config.json"]) == record["config"]  # the whole resolved config, one asset
    extension, data = sent["images"]["output_seed-0"]
    assert extension == "jpg" and Image.open(io.BytesIO(data)).format == "JPEG"


def check_report_and_view(sent: dict, upserts: list[dict], records: list[dict], axes: list[str]) -> None:
    sweep = records[0]["sweep_id"]
    keys = sorted(r["comet_key"] for r in records)
    assert f"report-of:{sweep}" in sent["tags"] and sent["params"]["axes"] == axes
    assert sorted(sent["params"]["axis.guidance"]) == [5.0, 9.0] and isinstance(sent["params"]["cells"], int)
    assert "best_drift_psnr" in sent["metrics"] and sent["params"]["best.drift_psnr.guidance"] in (5.0, 9.0)
    grids = [(ext, data) for name, (ext, data) in sent["images"].items()]
    assert grids and all(ext == "jpg" and Image.open(io.BytesIO(data)).format == "JPEG" for ext, data in grids)
    assert b"<html" in sent["assets"]["index.html"] and all(k in sent["html"] for k in keys)  # links to every cell
    assert sorted(c["key"] for c in json.loads(sent["assets"]["cell_experiments.json"])) == keys
    # The sweep's view: one, named after it, filtered to its cells, with the three kinds of panel.
    (view_sent,) = upserts
    assert view_sent["templateName"] == f"inpaint-sweep {sweep}" and view_sent["projectId"] == "proj-1"
    assert f"sweep:{sweep}" in view_sent["experimentQueryState"]
    panels = [p for section in view_sent["v3"]["sections"] for p in section["panels"]]
    by_type = {t: [p for p in panels if p["type"] == t] for t in ("image", "parallel_coordinates", "bar")}
    assert by_type["image"][0]["images"] == ["output_seed-0"]
    assert by_type["parallel_coordinates"][0]["parameters"] == axes
    assert "generation_seconds" in by_type["parallel_coordinates"][0]["metrics"]
    assert {(p["x"]["name"], p["y"]["name"]) for p in by_type["bar"]} >= {(a, "drift_psnr") for a in axes}


GRID = ["-m", *FIXED_GRID, "guidance=5,9", "negative_prompt='',cartoon"]
AXES = ["guidance", "negative_prompt"]


@pytest.mark.slow
def test_offline_archives_uploaded_with_comet_upload_read_as_people_compare_runs(tmp_path, prepared, model_cache,
                                                                                 report_stage, comet_server,
                                                                                 monkeypatch):
    monkeypatch.delenv("COMET_API_KEY", raising=False)
    generate(tmp_path, prepared, model_cache, *GRID)
    report_stage([f"paths.generate={tmp_path}/gen", f"paths.report={tmp_path}/rep"])
    archives = sorted((tmp_path / "gen" / "comet").glob("*.zip")) + sorted((tmp_path / "rep" / "comet").glob("*.zip"))
    (view_file,) = (tmp_path / "rep" / "comet").glob("view-*.json")
    assert len(archives) == 5

    # comet_ml's own uploader, then the command the report stage prints for the view.
    url, received = comet_server
    env = stage_env(COMET_API_KEY="key", COMET_URL_OVERRIDE=url)
    upload = run(["python", "-m", "comet_ml.scripts.comet_upload", *map(str, archives)], env=env)
    assert "Number of uploaded experiments: 5" in upload.stdout + upload.stderr
    applied = run(["python", "-m", "inpaint_sweep.comet_report", str(view_file)], env=env)
    assert "Comet view saved" in applied.stdout

    sent = experiments(received)
    records = view(tmp_path)
    assert len(records) == 4 and {r["comet_key"] for r in records} < set(sent)  # the archives' keys, kept
    # Where each cell ran is in the report's image details too.
    from inpaint_sweep.machine import describe

    page = (tmp_path / "rep" / "index.html").read_text()
    assert json.dumps(describe(records[0]["machine"]))[1:-1] in page and records[0]["machine"]["cpu"]
    for record in records:
        check_cell_experiment(sent[record["comet_key"]], record, AXES)
        start, end = sent[record["comet_key"]]["times"]
        assert 0 < end - start < 60_000  # Comet's duration: the logging (the generation time is the metric above)
    (report_key,) = set(sent) - {r["comet_key"] for r in records}
    upserts = [r["json"] for r in received if r["path"].endswith("/write/views/upsert")]
    check_report_and_view(sent[report_key], upserts, records, AXES)


@pytest.mark.slow
def test_a_keyed_run_sends_the_same_online_and_saves_the_view(tmp_path, prepared, model_cache, report_stage,
                                                              comet_server, monkeypatch):
    from inpaint_sweep import tracking

    url, received = comet_server
    monkeypatch.setenv("COMET_API_KEY", "key")
    monkeypatch.setenv("COMET_URL_OVERRIDE", url)
    tracking.server_accepts_key.cache_clear()
    try:
        generate(tmp_path, prepared, model_cache, *GRID)
        report_stage([f"paths.generate={tmp_path}/gen", f"paths.report={tmp_path}/rep"])
    finally:
        tracking.server_accepts_key.cache_clear()
    records = view(tmp_path)
    assert all(r["comet"] == f"{url.removesuffix('clientlib/')}ws/inpaint-sweep/{r['comet_key']}" for r in records)
    assert not list((tmp_path / "rep" / "comet").glob("*"))  # online: no archive, no view file
    sent = experiments(received)
    for record in records:
        check_cell_experiment(sent[record["comet_key"]], record, AXES)
    (report_key,) = set(sent) - {r["comet_key"] for r in records}
    upserts = [r["json"] for r in received if r["path"].endswith("/write/views/upsert")]
    check_report_and_view(sent[report_key], upserts, records, AXES)
    assert all(r["comet"] in sent[report_key]["html"] for r in records)  # online: links, not just keys


def test_where_a_cell_ran_is_recorded_and_never_part_of_its_identity(tmp_path, prepared, model_cache, monkeypatch):
    from inpaint_sweep.machine import machine_info

    args = ["-m", *FIXED_GRID, "guidance=5,9", "tracking.comet=false"]
    generate(tmp_path / "a", prepared, model_cache, *args)
    # The same grid "on another machine": a Slurm array task on another node, another store.
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4240")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURMD_NODENAME", "gpu-node-07")
    machine_info.cache_clear()
    try:
        generate(tmp_path / "b", prepared, model_cache, *args)
    finally:
        machine_info.cache_clear()
    here, there = view(tmp_path / "a"), view(tmp_path / "b")
    assert [r["cell_id"] for r in here] == [r["cell_id"] for r in there]  # same cells, wherever they were made
    import torch

    for record in here:
        m = record["machine"]
        assert m["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and m["cpu"] and m["hostname"]
        assert m["torch_build"] == torch.__version__ and "slurm_job_id" not in m
    assert all((r["machine"]["slurm_job_id"], r["machine"]["slurm_array_task_id"], r["machine"]["slurm_node"])
               == ("4242", "2", "gpu-node-07") for r in there)


def test_the_report_shows_where_each_cell_ran_and_older_records_still_read(tmp_path):
    from inpaint_sweep.machine import describe
    from inpaint_sweep.records import CellRecord

    old = CellRecord.from_dict({"cell_id": "c-1", "case": "c", "guidance": 5})  # written before `machine`
    assert old.machine == {} and describe(old.machine) == ""
    line = describe({"hostname": "n1", "cpu": "Xeon", "cpu_capability": "AVX512", "torch_build": "2.4.0+cu121",
                     "gpu": "H100", "gpu_driver": "550.54", "torch_cuda": "12.1", "slurm_job_id": "9",
                     "slurm_array_job_id": "7", "slurm_array_task_id": "2", "slurm_node": "g7"})
    assert line == "n1 · Xeon (AVX512) · H100 (driver 550.54, CUDA 12.1) · torch 2.4.0+cu121 · slurm job 7_2 on g7"


def test_an_older_record_sends_typed_parameters_without_placeholders():
    """A record written before identities were stored: its config's unset values are left out, not worded."""
    from inpaint_sweep.logbook import comet_params, experiment_name
    from inpaint_sweep.records import CellRecord

    record = CellRecord.from_dict({
        "cell_id": "bus-0123456789ab", "case": "bus", "guidance": 7.5, "negative_prompt": "", "prompt": "a dragon",
        "model": "tiny", "model_id": "builtin/tiny-sd-inpaint", "model_revision": "v2-seed0", "mask_method": "box",
        "config": {"guidance": 7.5, "steps": 8, "negative_prompt": "", "prompt": None, "model.scheduler": None,
                   "model.cpu_threads": None, "mask.classes": [], "model.cache_dir": ".cache/models",
                   "model.seed": 0, "model.source": "tiny", "seed": 0, "prompt_sr": None}})
    params = comet_params(record)
    assert params == {"case": "bus", "cell_id": "bus-0123456789ab", "guidance": 7.5, "mask.method": "box",
                      "model.id": "builtin/tiny-sd-inpaint", "model.name": "tiny", "model.revision": "v2-seed0",
                      "negative_prompt": "", "prompt": "a dragon", "seed": 0, "steps": 8}
    assert experiment_name(record, ["guidance", "negative_prompt"]) == "bus · guidance=7.5 · neg=(none)"
    record.config["seed"] = [0, 1, 2]  # three images of one batched call: `seeds`, and `seed` stays a number column
    assert comet_params(record)["seeds"] == [0, 1, 2] and "seed" not in comet_params(record)
    assert experiment_name(record, []) == "bus · steps=8 · guidance=7.5 · neg=(none)"  # nothing varied


def _repo(folder: Path, origin: str) -> Path:
    folder.mkdir()
    for cmd in (["init", "-q", "-b", "main"], ["remote", "add", "origin", origin]):
        subprocess.run(["git", *cmd], cwd=folder, check=True)
    (folder / "code.py").write_text("x = 1\n")
    subprocess.run(["git", "add", "-A"], cwd=folder, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"], cwd=folder, check=True)
    return folder


def _unzipped(data: bytes) -> bytes:
    """Every byte of a zip archive's files, nested archives (comet_ml zips the git patch) unpacked too."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return b"".join(_unzipped(d) if d[:2] == b"PK" else d for d in map(z.read, z.namelist()))


def _archive_messages(archive: str) -> tuple[list[dict], bytes]:
    with zipfile.ZipFile(archive) as z:
        messages = [json.loads(x) for x in z.read("messages.json").decode().splitlines() if x.strip()]
    return messages, _unzipped(Path(archive).read_bytes())


def test_git_metadata_goes_without_credentials_and_the_patch_only_when_asked(tmp_path, monkeypatch, caplog, photo):
    from inpaint_sweep import tracking

    secret = "SENTINEL-git-token-5d1e"
    monkeypatch.setenv("COMET_API_KEY", "SENTINEL-comet-4f1c9a")  # never written anywhere either
    photo.save(tmp_path / "out.png")

    def logged(repo: Path, git_patch: bool) -> tuple[list[dict], bytes]:
        monkeypatch.chdir(repo)
        tracking.git_remote_is_safe.cache_clear()
        try:
            where = tracking.log_cell(tmp_path / "comet", False, "p", None, "c", {"guidance": 5.0}, {}, ["t"],
                                      {"output": str(tmp_path / "out.png")}, git=tracking.git_remote_is_safe(),
                                      git_patch=git_patch)
        finally:
            tracking.git_remote_is_safe.cache_clear()
        return _archive_messages(where)

    # A remote URL holding a token (with a user name, or as the user name): no git metadata at all, one warning each,
    # the token nowhere.
    for n, origin in enumerate([f"https://user:{secret}@git.example.com/team/repo.git",
                                f"https://{secret}@git.example.com/team/repo.git"]):
        messages, everything = logged(_repo(tmp_path / f"leaky{n}", origin), git_patch=True)
        assert not [m for m in messages if m["type"] == "git_metadata"] and secret.encode() not in everything
        assert caplog.text.count("holds a credential") == n + 1 and b"SENTINEL-comet" not in everything

    # A plain remote: commit and branch; the uncommitted change only with tracking.git_patch.
    plain = _repo(tmp_path / "plain", "https://git.example.com/team/repo.git")
    (plain / "code.py").write_text("x = 2  # uncommitted\n")
    messages, everything = logged(plain, git_patch=False)
    (meta,) = [m["payload"]["git_metadata"] for m in messages if m["type"] == "git_metadata"]
    assert meta["parent"] == subprocess.run(["git", "rev-parse", "HEAD"], cwd=plain, capture_output=True,
                                            text=True).stdout.strip() and meta["branch"] == "refs/heads/main"
    assert b"uncommitted" not in everything
    messages, everything = logged(plain, git_patch=True)
    assert b"uncommitted" in everything and b"SENTINEL-comet" not in everything


def test_saving_a_view_without_a_key_or_a_server_fails_in_one_line(tmp_path):
    from inpaint_sweep.comet_report import build_view, view_file
    from inpaint_sweep.images import write_json

    path = tmp_path / "view-s1.json"
    write_json(view_file(build_view("s1", ["guidance"], ["drift_psnr"])), path)
    command = ["python", "-m", "inpaint_sweep.comet_report", str(path)]
    no_key = run(command, check=False)
    assert no_key.returncode == 2 and no_key.stderr.strip().splitlines() == [
        "error: COMET_API_KEY is not set: a view is saved in your Comet project, which needs your key"]
    with socket_bound() as port:  # a loopback port nothing answers on
        down = run(command, env=stage_env(COMET_API_KEY="key", COMET_HTTP_SESSION_RETRY_TOTAL="0",
                                          COMET_URL_OVERRIDE=f"http://127.0.0.1:{port}/clientlib/"), check=False)
    lines = down.stderr.strip().splitlines()
    assert down.returncode == 1 and len(lines) == 1 and lines[0].startswith(
        f"error: Comet view {path} was not saved: ConnectionError") and "Traceback" not in down.stderr


def socket_bound():
    """A context giving a loopback port that is bound but never listens: connections to it are refused."""
    import contextlib
    import socket

    @contextlib.contextmanager
    def bound():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            yield s.getsockname()[1]

    return bound()


def test_the_view_has_a_bar_chart_per_metric_and_axis_laid_out_without_overlap():
    from inpaint_sweep.comet_report import build_view

    view = build_view("s1", ["guidance", "strength", "steps"], ["drift_psnr", "seam"])
    (section,) = view.v3["sections"]
    bars = [(p["x"]["name"], p["y"]["name"]) for p in section["panels"] if p["type"] == "bar"]
    assert sorted(bars) == sorted((a, m) for a in ("guidance", "strength", "steps") for m in ("drift_psnr", "seam"))
    assert [b["i"] for b in section["layout"]] == [str(n) for n in range(len(section["panels"]))]
    taken = [(x, y) for b in section["layout"] for x in range(b["x"], b["x"] + b["w"])
             for y in range(b["y"], b["y"] + b["h"])]
    assert len(taken) == len(set(taken)) and max(x for x, _ in taken) < 12  # no overlap, within 12 columns
