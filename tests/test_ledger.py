"""The cell store as a ledger, attacked: re-runs keep every Comet log, nothing stale or corrupt is served, a bad value
touches nothing, two sweeps never mix, files are readable by colleagues, safety-checker verdicts are recorded."""

import dataclasses
import io
import json
import os
import signal
import stat
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from conftest import generate_here, run, stage_env
from conftest import counts, view

GRID = ["hydra.sweeper.params.strength=1.0", "hydra.sweeper.params.steps=2", "hydra.sweeper.params.negative_prompt=''",
        "model.size=64"]


def generate(tmp, prepared, model_cache, *args, check=True, view_dir="gen", env=None, popen=False):
    """The stage in this process; with `popen`, as a process of its own (to run beside another, or be interrupted)."""
    if not popen and env is None:
        flags = [a for a in args if a.startswith("-")]
        ran = generate_here(tmp, prepared, model_cache, *flags, *GRID, *[a for a in args if a not in flags],
                            view_dir=view_dir)
        assert not check or ran.returncode == 0, ran.stdout + ran.stderr
        return ran
    flags = [a for a in args if a.startswith("-")]  # -m first; the test's overrides after GRID, so they win
    cmd = ["python", "stages/generate.py", *flags, *GRID, *[a for a in args if a not in flags], f"paths.prepare={prepared}",
           f"paths.generate={tmp}/{view_dir}", f"paths.cell_store={tmp}/store",
           f"hydra.sweep.dir={tmp}/{view_dir}/hydra", f"hydra.run.dir={tmp}/{view_dir}/hydra/run",
           f"model.cache_dir={model_cache}"]
    if popen:
        log = open(tmp / f"{view_dir}-{time.monotonic_ns()}.log", "w+")
        return subprocess.Popen(cmd, env=env or stage_env(), stdout=log, stderr=subprocess.STDOUT, text=True), log
    return run(cmd, check=check, env=env)


def archives(tmp, view_dir="gen") -> list[Path]:
    return sorted(Path(tmp, view_dir, "comet").glob("*.zip"))


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*")
            if p.is_file() and "hydra" not in p.parts}


def test_rerunning_a_grid_keeps_every_cells_comet_archive(tmp_path, prepared, model_cache):
    first = generate(tmp_path, prepared, model_cache, "-m", "guidance=5,9")
    assert counts(first) == {"computed": 2, "reused": 0, "failed": 0}
    assert len(archives(tmp_path)) == 2

    # Re-run a larger grid: the reused cells come back with their archives, the new one gets its own.
    second = generate(tmp_path, prepared, model_cache, "-m", "guidance=5,9,12")
    assert counts(second) == {"computed": 1, "reused": 2, "failed": 0}
    records = view(tmp_path)
    assert len(records) == 3 and len(archives(tmp_path)) == 3
    for record in records:
        archive = Path(record["comet"])
        assert archive.parent == tmp_path / "gen" / "comet" and archive.is_file()
        with zipfile.ZipFile(archive) as z:
            assert z.testzip() is None and record["cell_id"] in z.read("experiment.json").decode() + \
                z.read("messages.json").decode()
    # The whole grid is uploadable from the view: `comet upload gen/comet/*.zip` names exactly these cells.
    assert sorted(a.stem for a in archives(tmp_path)) == sorted(r["cell_id"] for r in records)

    # And the same grid once more: nothing computed, nothing logged twice, nothing lost, and not a byte or timestamp
    # of the view changed (DVC sees nothing new to commit).
    before = snapshot(tmp_path / "gen")
    third = generate(tmp_path, prepared, model_cache, "-m", "guidance=5,9,12")
    assert counts(third) == {"computed": 0, "reused": 3, "failed": 0}
    assert snapshot(tmp_path / "gen") == before
    assert [a.read_bytes() for a in archives(tmp_path)] == [Path(r["comet"]).read_bytes() for r in
                                                          sorted(view(tmp_path), key=lambda r: r["cell_id"])]


def test_a_multi_seed_cell_logs_the_same_metric_names_as_a_single_seed_cell(tmp_path, prepared, model_cache):
    generate(tmp_path, prepared, model_cache, "-m", "guidance=5", "seed=0,[1,2]")
    names = []
    for archive in archives(tmp_path):
        with zipfile.ZipFile(archive) as z:
            lines = [json.loads(x) for x in z.read("messages.json").decode().splitlines() if x.strip()]
        names.append(sorted({m["payload"]["metric"]["metricName"] for m in lines if m["type"] == "metric_msg"}))
    assert len(names) == 2 and names[0] == names[1] and "drift_psnr" in names[0]


def test_a_model_folder_changed_in_place_is_computed_again_and_a_moved_one_is_not(tmp_path, prepared, model_cache):
    from inpaint_sweep.tiny_model import build_tiny_pipeline

    folder = tmp_path / "ckpt"
    build_tiny_pipeline(1).save_pretrained(folder, safe_serialization=True)
    local = ["model=local", f"model.id={folder}", "tracking.comet=false"]
    assert counts(generate(tmp_path, prepared, model_cache, "-m", "guidance=5", *local))["computed"] == 1
    before = view(tmp_path)[0]

    # Other weights saved over the same folder: same config, new pixels.
    build_tiny_pipeline(2).save_pretrained(folder, safe_serialization=True)
    again = generate(tmp_path, prepared, model_cache, "-m", "guidance=5", *local)
    assert counts(again) == {"computed": 1, "reused": 0, "failed": 0}
    after = view(tmp_path)[0]
    assert after["cell_id"] != before["cell_id"] and after["model_revision"] != before["model_revision"]

    # Only the scheduler config changed: computed again too.
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "beta_end": 0.02}))
    assert counts(generate(tmp_path, prepared, model_cache, "-m", "guidance=5", *local))["computed"] == 1

    # The same files in another folder: reused (the content is the identity, not the path).
    moved = tmp_path / "moved"
    folder.rename(moved)
    reused = generate(tmp_path, prepared, model_cache, "-m", "guidance=5", "model=local", f"model.id={moved}",
                      "tracking.comet=false")
    assert counts(reused) == {"computed": 0, "reused": 1, "failed": 0}


def test_a_corrupt_stored_file_is_computed_again_with_one_warning(tmp_path, prepared, model_cache):
    generate(tmp_path, prepared, model_cache, "-m", "guidance=5,9", "tracking.comet=false")
    target = view(tmp_path)[0]
    stored = tmp_path / "store" / target["cell_id"] / "seed-0.png"
    os.chmod(stored, 0o644)
    stored.write_bytes(stored.read_bytes()[:100])  # truncated on disk

    again = generate(tmp_path, prepared, model_cache, "-m", "guidance=5,9", "tracking.comet=false")
    assert counts(again) == {"computed": 1, "reused": 1, "failed": 0}
    output = again.stdout + again.stderr
    assert output.count("is corrupt") == 1 and f"stored cell {target['cell_id']} is corrupt" in output
    for record in view(tmp_path):
        Image.open(record["images"][0]["path"]).load()  # every image in the view decodes
    Image.open(stored).load()  # and the store holds a sound copy again


def test_the_view_shares_no_inode_with_the_store_and_a_truncated_view_copy_is_never_adopted(tmp_path, prepared,
                                                                                              model_cache):
    generate(tmp_path, prepared, model_cache, "-m", "guidance=5", "tracking.comet=false")
    (record,) = view(tmp_path)
    shown = Path(record["images"][0]["path"])
    stored = tmp_path / "store" / record["cell_id"] / shown.name
    assert shown.stat().st_ino != stored.stat().st_ino
    original = stored.read_bytes()

    # Edit the view's image in place: the store is untouched, and the next run puts the right file back.
    with open(shown, "r+b") as f:
        f.write(b"\0" * 64)
    assert stored.read_bytes() == original
    assert counts(generate(tmp_path, prepared, model_cache, "-m", "guidance=5", "tracking.comet=false"))["reused"] == 1
    assert shown.read_bytes() == original

    # Truncate the view copy and delete the store entry: the broken copy is not adopted back; the cell is recomputed.
    shown.write_bytes(original[:100])
    run(["rm", "-rf", str(tmp_path / "store" / record["cell_id"])])
    again = generate(tmp_path, prepared, model_cache, "-m", "guidance=5", "tracking.comet=false")
    assert counts(again) == {"computed": 1, "reused": 0, "failed": 0}
    assert "is not adopted into the cell store: seed-0.png has 100 bytes" in again.stdout + again.stderr
    Image.open(shown).load()


def test_files_are_created_with_the_users_umask(tmp_path, prepared, model_cache):
    generate(tmp_path, prepared, model_cache, "-m", "guidance=5")
    written = [p for p in (tmp_path / "gen").rglob("*") if p.is_file() and "hydra" not in p.parts]
    assert written and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in written), \
        {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in written}
    stored = [p for p in (tmp_path / "store").glob("*/*") if p.is_file()]
    # Stored cell files are read-only for everyone (the record is rewritten by rename), but readable by all.
    assert stored and all(stat.S_IMODE(p.stat().st_mode) & 0o444 == 0o444 for p in stored)
    # ... in folders everyone can enter: a store shared on a cluster filesystem is readable by colleagues.
    folders = [p for p in [*(tmp_path / "store").glob("*"), *(tmp_path / "gen").rglob("*")] if p.is_dir()]
    assert folders and all(stat.S_IMODE(p.stat().st_mode) == 0o755 for p in folders), \
        {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in folders if stat.S_IMODE(p.stat().st_mode) != 0o755}

    # A cell stored by an earlier version (mkdtemp's 0700 folder) is opened up when it is next reused.
    (cell,) = [p for p in (tmp_path / "store").glob("*") if p.is_dir() and not p.name.startswith(".")]
    cell.chmod(0o700)
    assert counts(generate(tmp_path, prepared, model_cache, "-m", "guidance=5"))["reused"] == 1
    assert stat.S_IMODE(cell.stat().st_mode) == 0o755


@pytest.mark.parametrize("bad, words", [
    (["steps=0"], "error: steps must be >= 1, got steps=0"),
    (["model.scheduler=nope"], "error: unknown model.scheduler='nope'"),
    (["-m", "guidance=5,-1"], "error: guidance must be >= 0, got guidance=-1"),
])
def test_a_bad_value_leaves_the_view_untouched(tmp_path, prepared, model_cache, bad, words):
    generate(tmp_path, prepared, model_cache, "-m", "guidance=5,9")
    before = snapshot(tmp_path / "gen")
    result = generate(tmp_path, prepared, model_cache, *bad, check=False)
    assert result.returncode == 2 and words in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert snapshot(tmp_path / "gen") == before  # not a byte, not a timestamp changed


def test_a_single_run_keeps_the_view_consistent(tmp_path, prepared, model_cache):
    generate(tmp_path, prepared, model_cache, "-m", "guidance=5,9")
    single = generate(tmp_path, prepared, model_cache, "guidance=9", "steps=2", "strength=1.0", "negative_prompt=")
    assert counts(single) == {"computed": 0, "reused": 1, "failed": 0}
    assert [r["guidance"] for r in view(tmp_path)] == [9.0] and len(archives(tmp_path)) == 1


def test_a_second_sweep_on_the_same_view_stops_and_another_view_shares_the_store(tmp_path, prepared, model_cache):
    # Slow enough (about a second a cell) that the first sweep is still running while the others start.
    slow = ["hydra.sweeper.params.steps=8", "model.size=256", "tracking.comet=false"]
    first, log = generate(tmp_path, prepared, model_cache, "-m", "guidance=1,2,3,4,5,6,7,8,9,10", *slow, popen=True)
    try:
        deadline = time.time() + 120
        while not list((tmp_path / "store").glob("*/record.json")) and time.time() < deadline:
            assert first.poll() is None, Path(log.name).read_text()
            time.sleep(0.05)
        # Same view: refused at once, naming the running sweep; the first one's cells are not touched.
        second = generate(tmp_path, prepared, model_cache, "-m", "guidance=1,2", *slow, check=False)
        assert first.poll() is None, "the first sweep ended before the second started: the test proves nothing"
        assert second.returncode == 1  # a runtime condition (RunError), not a bad input
        assert f"error: another sweep (pid {first.pid}, started " in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
        # Another view on the same store: runs beside it; the cell the first already stored is reused.
        other = generate(tmp_path, prepared, model_cache, "-m", "guidance=1,2", *slow, view_dir="other")
        assert counts(other)["failed"] == 0 and counts(other)["reused"] >= 1
    finally:
        assert first.wait(timeout=300) == 0, Path(log.name).read_text()
    for view_dir, expected in (("gen", list(range(1, 11))), ("other", [1, 2])):
        records = sorted((json.loads(p.read_text()) for p in (tmp_path / view_dir / "cells").glob("*/record.json")),
                         key=lambda r: r["guidance"])
        assert [r["guidance"] for r in records] == expected
        for record in records:
            Image.open(record["images"][0]["path"]).load()
    assert len(list((tmp_path / "store").glob("*/record.json"))) == 10
    assert not list((tmp_path / "store").glob(".new-*")), "a half-published cell was left in the store"


def test_an_interrupted_sweep_keeps_what_it_computed_and_says_so(tmp_path, prepared, model_cache):
    slow = ["-m", "guidance=1,2,3,4,5,6,7,8,9,10", "hydra.sweeper.params.steps=8", "model.size=256",
            "tracking.comet=false"]  # about a second a cell: still running when interrupted
    generate(tmp_path, prepared, model_cache, "-m", "guidance=9", "tracking.comet=false")  # an older grid's cell
    proc, log = generate(tmp_path, prepared, model_cache, *slow, popen=True)
    deadline = time.time() + 120
    while len(list((tmp_path / "store").glob("*/record.json"))) < 3 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert proc.wait(timeout=120) == 130
    log.seek(0)
    printed = log.read()
    assert "(interrupted: what was computed is kept)" in printed and "Traceback" not in printed, printed
    assert proc.poll() is not None
    done = [r for r in view(tmp_path) if r["steps"] == 8]
    assert 2 <= len(done) < 10 and all(Path(r["images"][0]["path"]).is_file() for r in done)
    assert any(r["steps"] == 2 for r in view(tmp_path))  # the older grid's cell: an interrupted run removes nothing


def test_safety_checker_verdicts_are_recorded(tmp_path, prepared, model_cache):
    from diffusers import StableDiffusionInpaintPipeline

    from inpaint_sweep.tiny_model import build_tiny_pipeline, build_tiny_safety_checker

    checker, processor = build_tiny_safety_checker(flag_everything=True)
    components = {**build_tiny_pipeline(0).components, "safety_checker": checker, "feature_extractor": processor}
    StableDiffusionInpaintPipeline(**components, requires_safety_checker=True).save_pretrained(
        tmp_path / "checked", safe_serialization=True)
    result = generate(tmp_path, prepared, model_cache, "-m", "guidance=5", "seed=[0,1]", "model=local",
                      f"model.id={tmp_path / 'checked'}", "tracking.comet=false")
    (record,) = view(tmp_path)
    assert [e["nsfw"] for e in record["images"]] == [True, True]
    assert "the safety checker flagged seed(s) [0, 1]" in result.stdout + result.stderr
    # Without a checker the verdict is unknown, not "safe".
    generate(tmp_path, prepared, model_cache, "-m", "guidance=5", "tracking.comet=false")
    assert [e["nsfw"] for e in view(tmp_path)[0]["images"]] == [None]


def test_every_config_field_is_in_the_identity_or_excluded_with_a_reason():
    """Change each field of the schema in turn: the cell's identity must change, unless the key is in NOT_IDENTITY
    with its reason. A new field therefore joins the identity unless someone says why it cannot change pixels."""
    from omegaconf import OmegaConf

    from inpaint_sweep.config import Config, MaskConfig, ModelConfig, load_config
    from inpaint_sweep.identity import NOT_IDENTITY, generation_config

    base = load_config(["model.device=cpu"])
    assert all(isinstance(reason, str) and len(reason) > 20 for reason in NOT_IDENTITY.values())
    fields = [f"model.{f.name}" for f in dataclasses.fields(ModelConfig)]
    fields += [f.name for f in dataclasses.fields(Config) if f.name not in ("model", "mask")]
    fields += [f"mask.{f.name}" for f in dataclasses.fields(MaskConfig)]  # prepare's and generate's keys
    for key in fields:
        excluded = any(key == k or key.startswith(k + ".") for k in NOT_IDENTITY)
        value = OmegaConf.select(base, key)
        if OmegaConf.is_config(value):  # a group of settings (mask, tracking, ...): each sub-key is excluded as a group
            assert excluded, f"{key} is a group that is neither hashed key by key nor excluded"
            continue
        cfg = _changed(base, key, value)
        differs = generation_config(cfg) != generation_config(base)
        assert differs != excluded, (f"{key}: " + ("excluded from the identity but changes it" if excluded else
                                                   "changes nothing in the identity and is not in NOT_IDENTITY"))


def _changed(base, key, value):
    """A copy of `base` with `key` set to another value its type accepts."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ValidationError

    candidates = [not value] if isinstance(value, bool) else []
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        candidates += [value + 8, value + 0.5]
    candidates += [f"{value}-x" if value is not None else "x", True, 8]
    for candidate in candidates:
        cfg = base.copy()
        try:
            OmegaConf.update(cfg, key, candidate, merge=False)
        except ValidationError:
            continue
        if OmegaConf.select(cfg, key) != value:
            return cfg
    raise AssertionError(f"no other value found for {key}={value!r}")


def test_a_prompt_longer_than_the_model_reads_is_one_warning_and_recorded(tmp_path, prepared, model_cache):
    cases = json.loads((prepared / "cases.json").read_text())
    from inpaint_sweep.tiny_model import build_tokenizer

    long = "a realistic green dragon with scales " * 4
    dropped = len(build_tokenizer()(long).input_ids) - 77  # the tiny model's CLIP reads 77 tokens, as SD's does
    assert dropped > 0
    (tmp_path / "prep").mkdir()
    (tmp_path / "prep" / "cases.json").write_text(json.dumps([{**cases[0], "prompt": long}]))
    result = generate(tmp_path, tmp_path / "prep", model_cache, "-m", "guidance=5,9", "tracking.comet=false")
    printed = result.stdout + result.stderr
    assert printed.count("is longer than the model reads") == 1, printed  # once per prompt, not per cell
    assert f"its last {dropped} token(s) are dropped" in printed
    assert "Token indices sequence length" not in printed  # not the library's misleading warning
    assert all(r["prompt_truncated"] is True and r["negative_prompt_truncated"] is False for r in view(tmp_path))


def test_comet_gets_capped_previews_and_the_photo_once_per_case(tmp_path, prepared, model_cache):
    generate(tmp_path, prepared, model_cache, "-m", "guidance=5,9,12")
    logged = {}
    for archive in archives(tmp_path):
        with zipfile.ZipFile(archive) as z:
            messages = [json.loads(x) for x in z.read("messages.json").decode().splitlines() if x.strip()]
            uploads = {m["payload"]["additional_params"]["figName"]: z.read(m["payload"]["file_path"])
                       for m in messages if m["type"] == "file_upload"
                       and m["payload"]["upload_type"] == "visualization"}  # the pictures, not config.json
            params = {m["payload"]["param"]["paramName"]: m["payload"]["param"]["paramValue"]
                      for m in messages if m["type"] == "parameter_msg"}
            others = {m["payload"]["key"]: m["payload"]["value"] for m in messages if m["type"] == "log_other"}
        logged[archive.stem] = (uploads, params, others)
    with_inputs = [cid for cid, (uploads, _, _) in logged.items() if "input" in uploads]
    assert len(with_inputs) == 1 and all(others["inputs_logged_in"] == with_inputs[0]
                                         for _, _, others in logged.values())
    for uploads, params, _ in logged.values():
        picture = Image.open(io.BytesIO(uploads["output_seed-0"]))
        assert picture.format == "JPEG" and picture.width * picture.height <= 1_000_000
        # Real values: "" is an empty negative prompt; an unset scheduler (the checkpoint's own) is no parameter.
        assert params["negative_prompt"] == "" and "model.scheduler" not in params
    full = Image.open(view(tmp_path)[0]["images"][0]["path"])
    assert full.format == "PNG" and full.size == Image.open(prepared / "bus_person" / "image.png").size
