"""generate: the tiny model, pixels outside the mask, reproducible cells, checkpoints from folders, the Hydra sweep.
The stage runs as a process of its own twice: one plain multirun end to end with its Comet archives, and a whole
pipeline run in a fresh process that may open no network connection."""

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inpaint_sweep.config import ConfigError
from inpaint_sweep.inpaint import composite, inpaint, working_size
from inpaint_sweep.masks import box_mask
from inpaint_sweep.config import model_config
from inpaint_sweep.model import load_model
from inpaint_sweep.tiny_model import build_tiny_pipeline, build_tokenizer

from conftest import generate_stage, run, stage_env

SETTINGS = dict(prompt="a realistic green dragon", negative_prompt="cartoon", steps=2, guidance=7.5, strength=1.0, size=64)


def test_tokenizer_is_built_in_code_and_tokenizes_any_prompt():
    tok = build_tokenizer()
    ids = tok("A realistic green dragon, ünïcode!").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids[1:-1]
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == "arealisticgreendragon,ünïcode!"


def test_tiny_pipeline_is_deterministic_from_its_seed():
    a, b, c = build_tiny_pipeline(0), build_tiny_pipeline(0), build_tiny_pipeline(1)
    wa, wb, wc = (p.unet.conv_in.weight.detach() for p in (a, b, c))
    assert (wa == wb).all() and not (wa == wc).all()
    assert a.unet.config.in_channels == 9 and a.vae_scale_factor == 8


def test_working_size_keeps_aspect_in_multiples_of_8():
    assert working_size((810, 1080), 256) == (192, 256)
    assert working_size((1280, 720), 512) == (512, 288)
    w, h = working_size((1000, 333), 256)
    assert w % 8 == 0 and h % 8 == 0


def test_pixels_outside_the_mask_equal_the_input(tiny_model, photo):
    mask = box_mask(photo.size, (30, 20, 70, 60))
    (out, metrics), = inpaint(tiny_model.pipe, photo, mask, seeds=0, device="cpu", **SETTINGS)
    src, res = np.asarray(photo), np.asarray(out)
    assert res.shape == src.shape
    assert (res[~mask] == src[~mask]).all()
    assert (res[mask] != src[mask]).any()  # the tiny model paints noise inside
    assert metrics["drift_mae"] > 0 and metrics["drift_psnr"] < 100 and metrics["seconds"] > 0


def test_same_seed_same_pixels_other_seed_other_pixels(tiny_model, photo):
    mask = box_mask(photo.size, (30, 20, 70, 60))
    a = np.asarray(inpaint(tiny_model.pipe, photo, mask, seeds=3, device="cpu", **SETTINGS)[0][0])
    # Run another cell in between: generators are per cell, so nothing leaks from one cell to the next.
    inpaint(tiny_model.pipe, photo, mask, seeds=4, device="cpu", **SETTINGS)
    b = np.asarray(inpaint(tiny_model.pipe, photo, mask, seeds=3, device="cpu", **SETTINGS)[0][0])
    c = np.asarray(inpaint(tiny_model.pipe, photo, mask, seeds=4, device="cpu", **SETTINGS)[0][0])
    assert (a == b).all() and (a != c).any()


def test_composite_is_exact_outside_a_ragged_mask(photo):
    rng = np.random.default_rng(1)
    mask = rng.random((80, 100)) > 0.7
    noise = Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    out = np.asarray(composite(photo, noise, mask))
    assert (out[~mask] == np.asarray(photo)[~mask]).all()


def test_local_folder_preset_loads_a_saved_pipeline(tmp_path, photo):
    build_tiny_pipeline(5).save_pretrained(tmp_path / "ckpt", safe_serialization=True)
    model = load_model(model_config("pretrained", id=str(tmp_path / "ckpt"), cache_dir=str(tmp_path)))
    assert model.model_id == str(tmp_path / "ckpt") and type(model.pipe).__name__ == "StableDiffusionInpaintPipeline"
    (out, _), = inpaint(model.pipe, photo, box_mask(photo.size, (0, 0, 50, 50)), seeds=0, device="cpu", **SETTINGS)
    assert out.size == photo.size


def test_hub_preset_offline_says_how_to_use_a_local_folder(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_model(model_config("pretrained", id="stabilityai/stable-diffusion-2-inpainting", revision="main", cache_dir=str(tmp_path)))
    message = str(e.value)
    assert "model.id='stabilityai/stable-diffusion-2-inpainting' is not available offline" in message
    assert "model=local model.id=/path/to/folder" in message


def comet_params(archive: Path) -> dict:
    with zipfile.ZipFile(archive) as z:
        lines = [json.loads(line) for line in z.read("messages.json").decode().splitlines() if line.strip()]
    return {m["payload"]["param"]["paramName"]: m["payload"]["param"]["paramValue"]
            for m in lines if m["type"] == "parameter_msg"}


def sweep(tmp_path, prepared, model_cache, *args, env=None):
    """The stage's multirun at 2 steps, strength 1 and negative prompt 'cartoon', as a process of its own."""
    grid = ["hydra.sweeper.params.strength=1.0", "hydra.sweeper.params.steps=2",
            "hydra.sweeper.params.negative_prompt=cartoon"]
    return generate_stage(tmp_path, prepared, model_cache, "-m", *args, *grid, env=env), tmp_path / "gen"


def test_multirun_over_three_guidance_values(tmp_path, prepared, model_cache):
    result, gen = sweep(tmp_path, prepared, model_cache, "guidance=5,7.5,12")
    records = [json.loads(p.read_text()) for p in sorted(gen.glob("cells/*/record.json"))]
    assert sorted(r["guidance"] for r in records) == [5.0, 7.5, 12.0]
    assert all(r["status"] == "ok" and r["steps"] == 2 and r["negative_prompt"] == "cartoon" for r in records)
    assert all(r["model_id"] == "builtin/tiny-sd-inpaint" and r["code_version"] for r in records)
    # One Comet archive per cell, holding that cell's resolved settings; the record names its archive.
    archives = sorted(gen.glob("comet/*.zip"))
    assert len(archives) == 3
    assert sorted(comet_params(a)["guidance"] for a in archives) == [5.0, 7.5, 12.0]
    for r in records:
        assert comet_params(Path(r["comet"]))["cell_id"] == r["cell_id"]
        # Named by the case and the one axis that varied (the grid sweeper hands its jobs the sweep's axes).
        with zipfile.ZipFile(r["comet"]) as z:
            assert f'"value":"bus_person \\u00b7 guidance={r["guidance"]:g}"' in z.read("messages.json").decode()
    # The pipeline is built once for the whole multirun.
    assert result.stderr.count("loaded model builtin/tiny-sd-inpaint") + result.stdout.count("loaded model builtin/tiny-sd-inpaint") == 1
    assert "comet upload" in result.stdout


NETGUARD = '''
import ipaddress, json, os, socket, sys

LOG = os.environ["NETGUARD_LOG"]

def _loopback(host):
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return host in ("localhost", "")

def _hook(event, args):
    if event == "socket.connect":
        sock, address = args
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            with open(LOG, "a") as f:
                f.write(json.dumps({"event": event, "to": str(address)}) + "\\n")
            raise OSError("netguard: connection to a non-loopback address blocked")
    elif event == "socket.getaddrinfo" and args[0] is not None and not _loopback(args[0]):
        with open(LOG, "a") as f:
            f.write(json.dumps({"event": event, "to": str(args[0])}) + "\\n")
        raise OSError("netguard: name lookup blocked")

sys.addaudithook(_hook)
'''


def test_default_run_opens_no_network_connection(tmp_path, prepared, model_cache):
    guard = tmp_path / "netguard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NETGUARD)
    log = tmp_path / "net.log"
    # The guard first; then whatever PYTHONPATH this run has (a worktree's src/ over the venv's editable install).
    env = stage_env(PYTHONPATH=os.pathsep.join(filter(None, [str(guard), os.environ.get("PYTHONPATH")])),
                    NETGUARD_LOG=str(log))
    run(["python", "stages/prepare.py", f"paths.prepare={tmp_path}/prep"], env=env)
    sweep(tmp_path, tmp_path / "prep", model_cache, "guidance=5", env=env)
    run(["python", "stages/report.py", f"paths.generate={tmp_path}/gen", f"paths.report={tmp_path}/rep"], env=env)
    assert (tmp_path / "rep" / "runs.csv").exists()
    assert not log.exists(), log.read_text()


def test_soft_mask_feathers_the_seam_and_keeps_the_outside_exact(photo):
    mask = box_mask(photo.size, (30, 20, 70, 60))
    soft = np.where(mask, 255, 0).astype(np.uint8)
    soft[20:60, 30:34] = 64  # a feathered left edge, inside the mask
    generated = Image.new("RGB", photo.size, (0, 0, 255))
    hard = np.asarray(composite(photo, generated, mask)).astype(int)
    out = np.asarray(composite(photo, generated, mask, soft=soft)).astype(int)
    src = np.asarray(photo).astype(int)
    assert (out[~mask] == src[~mask]).all()  # outside: the original, bit for bit
    assert (out[25:55, 40:65] == (0, 0, 255)).all()  # full inside: the generated pixels
    edge = out[20:60, 30:34]
    expected = np.round(64 / 255 * np.array([0, 0, 255]) + (1 - 64 / 255) * src[20:60, 30:34])
    assert np.abs(edge - expected).max() <= 1 and (edge != hard[20:60, 30:34]).any()
