"""Model presets and settings, offline: SDXL and single-file code paths on tiny models, the scheduler as a setting,
device/precision/memory settings, and padding_mask_crop on a big photo."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from inpaint_sweep import model as model_module
from inpaint_sweep.config import ConfigError, check_config, check_model_config, load_config
from inpaint_sweep.inpaint import inpaint
from inpaint_sweep.masks import box_mask
from inpaint_sweep.config import model_config
from inpaint_sweep.model import load_model, set_scheduler
from inpaint_sweep.tiny_model import (
    build_tiny_pipeline,
    build_tiny_sdxl_pipeline,
    save_config_folder,
    save_single_file,
)

from conftest import run

CALL = dict(prompt="a realistic green dragon", negative_prompt="cartoon", steps=2, guidance=7.5, strength=1.0, size=64)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd") / "tiny-sd"
    build_tiny_pipeline(7).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sdxl") / "tiny-sdxl"
    build_tiny_sdxl_pipeline(0).save_pretrained(folder, safe_serialization=True)
    return folder


def outside_equal_inside_changed(photo, mask, out):
    src, res = np.asarray(photo), np.asarray(out)
    return res.shape == src.shape and (res[~mask] == src[~mask]).all() and (res[mask] != src[mask]).any()


# --- presets and validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["model.scheduler=karras"], "unknown model.scheduler='karras'; choose one of null, ddim"),
        (["model.scheduler=lms"], "unknown model.scheduler='lms'"),
        (["model.offload=disk"], "unknown model.offload='disk'"),
        (["model.attention=flash"], "unknown model.attention='flash'"),
        (["model.dtype=int8"], "unknown model.dtype='int8'"),
        (["model.device=tpu"], "unknown model.device='tpu'"),
        (["model.pipeline=flux"], "unknown model.pipeline='flux'"),
        (["model.cpu_threads=0"], "model.cpu_threads must be null or >= 1, got model.cpu_threads=0"),
        (["model.padding_mask_crop=-4"], "model.padding_mask_crop must be null or >= 0 pixels, got model.padding_mask_crop=-4"),
        (["model.offload=model", "model.device=cpu"], "model.offload=model moves models to a CUDA GPU in turn, got model.device=cpu"),
        (["model=single_file", "model.id=/models/v1-5-inpainting.ckpt"],
         "model.id='/models/v1-5-inpainting.ckpt' is not a .safetensors file; pickle checkpoints (.ckpt/.bin) can run "
         "arbitrary code when loaded: convert it, or set model.allow_unsafe_pickle=true"),
    ],
)
def test_bad_model_settings_are_named(overrides, words):
    with pytest.raises(ConfigError) as e:
        check_config(load_config(overrides))
    assert words in str(e.value)
    assert str(e.value).count("\n") == 0


def test_cpu_threads_leave_a_core_for_writing_unless_told(monkeypatch):
    import os

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        cores = len(os.sched_getaffinity(0))
        assert model_module.use_cpu_threads("cpu", None) == max(1, cores - 1) == torch.get_num_threads()
        assert model_module.use_cpu_threads("cpu", 3) == 3 == torch.get_num_threads()
        assert model_module.use_cpu_threads("cuda", None) is None and torch.get_num_threads() == 3  # a GPU: untouched
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert model_module.use_cpu_threads("cpu", None) is None and torch.get_num_threads() == 3  # the user's say
    finally:
        torch.set_num_threads(before)


def test_hub_presets_name_checkpoint_revision_and_size():
    expected = {
        "sd15_inpaint": ("stable-diffusion-v1-5/stable-diffusion-inpainting", 512),
        "sd2_inpaint": ("stabilityai/stable-diffusion-2-inpainting", 512),
        "sdxl_inpaint": ("diffusers/stable-diffusion-xl-1.0-inpainting-0.1", 1024),
    }
    for preset, (hub_id, size) in expected.items():
        m = load_config([f"model={preset}"]).model
        assert (m.source, m.id, m.size) == ("pretrained", hub_id, size)
        assert m.revision == "main"  # no commit hash was verified offline, so none is pinned
    # The GPU user's defaults, from the schema: fp16 on CUDA, SDPA, channels_last, everything on the GPU.
    m = load_config(["model=sd2_inpaint"]).model
    assert (m.device, m.dtype, m.attention, m.channels_last, m.offload, m.compile_unet) == (
        "auto", "auto", "sdpa", True, "none", False)
    assert m.scheduler is None and m.padding_mask_crop is None


# --- SDXL through the local preset and the stage ----------------------------------------------------------------------


def test_tiny_sdxl_runs_through_the_local_folder_path(sdxl_folder, photo):
    model = load_model(model_config("pretrained", id=str(sdxl_folder), cache_dir=str(sdxl_folder.parent)))
    assert type(model.pipe).__name__ == "StableDiffusionXLInpaintPipeline"
    assert model.pipe.text_encoder_2 is not None and model.pipe.vae_scale_factor == 8
    assert model.pipe.vae.config.force_upcast is True  # the VAE config's force_upcast, as SDXL's own
    mask = box_mask(photo.size, (30, 20, 70, 60))
    (a, metrics_a), (b, _) = inpaint(model.pipe, photo, mask, seeds=[0, 1], device="cpu", **CALL)
    assert outside_equal_inside_changed(photo, mask, a) and outside_equal_inside_changed(photo, mask, b)
    assert (np.asarray(a) != np.asarray(b)).any()
    assert np.isfinite(metrics_a["drift_mae"]) and np.isfinite(metrics_a["change_inside_mae"])


def test_tiny_sdxl_through_the_stage_with_a_scheduler_sweep(tmp_path, sdxl_folder, prepared):
    prep, gen = prepared, tmp_path / "gen"
    result = run([
        "python", "stages/generate.py", "-m", "model=local", f"model.id={sdxl_folder}", "model.size=64",
        "model.scheduler=ddim,euler_a",
        "hydra.sweeper.params.guidance=7.5", "hydra.sweeper.params.strength=1.0", "hydra.sweeper.params.steps=2",
        "hydra.sweeper.params.negative_prompt=cartoon", "tracking.comet=false",
        f"paths.prepare={prep}", f"paths.generate={gen}", f"paths.cell_store={tmp_path}/store",
        f"hydra.sweep.dir={gen}/hydra",
    ])
    records = [json.loads(p.read_text()) for p in sorted(gen.glob("cells/*/record.json"))]
    assert len(records) == 2 and all(r["status"] == "ok" for r in records)
    assert all(r["model_id"] == str(sdxl_folder) and r["model"] == "local" for r in records)
    assert sorted((r["scheduler"], r["scheduler_class"]) for r in records) == [
        ("ddim", "DDIMScheduler"), ("euler_a", "EulerAncestralDiscreteScheduler")]
    assert records[0]["cell_id"] != records[1]["cell_id"]  # the scheduler is part of the cell's identity
    images = [np.asarray(Image.open(r["images"][0]["path"])) for r in records]
    assert images[0].shape == (1080, 810, 3)  # bus.jpg, full size
    assert (images[0] != images[1]).any()
    # One pipeline for both schedulers: swapping the scheduler never reloads the model.
    assert (result.stdout + result.stderr).count("loaded model") == 1


# --- single file ------------------------------------------------------------------------------------------------------


def test_single_file_with_a_local_config_loads_the_same_weights(tmp_path, sd_folder, photo):
    pipe = build_tiny_pipeline(7)
    file = save_single_file(pipe, tmp_path / "tiny-inpaint.safetensors")
    config = save_config_folder(pipe, tmp_path / "config")
    assert not list(config.rglob("*.safetensors"))  # the config folder holds no weights: they come from the file
    model = load_model(model_config("single_file", id=str(file), config=str(config), pipeline="sd", cache_dir=str(tmp_path)))
    assert type(model.pipe).__name__ == "StableDiffusionInpaintPipeline"
    assert model.model_id == str(file) and model.revision == "tiny-inpaint.safetensors"
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(model.pipe, name).state_dict(), getattr(pipe, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    # The same pixels as the diffusers folder of the same pipeline.
    folder = load_model(model_config("pretrained", id=str(sd_folder), cache_dir=str(tmp_path)))
    mask = box_mask(photo.size, (30, 20, 70, 60))
    a = inpaint(model.pipe, photo, mask, seeds=3, device="cpu", **CALL)[0][0]
    b = inpaint(folder.pipe, photo, mask, seeds=3, device="cpu", **CALL)[0][0]
    assert (np.asarray(a) == np.asarray(b)).all()


def test_single_file_without_config_offline_says_what_to_set(tmp_path):
    file = save_single_file(build_tiny_pipeline(0), tmp_path / "model.safetensors")
    with pytest.raises(ConfigError) as e:
        load_model(model_config("single_file", id=str(file), config=None, cache_dir=str(tmp_path)))
    assert "model.config" in str(e.value) and "local diffusers folder" in str(e.value)
    with pytest.raises(ConfigError, match="is not a file"):
        load_model(model_config("single_file", id=str(tmp_path / "missing.safetensors"), config=str(tmp_path), cache_dir=str(tmp_path)))


# --- scheduler --------------------------------------------------------------------------------------------------------


def test_scheduler_swaps_without_reloading(tiny_model, photo):
    pipe = tiny_model.pipe
    default = tiny_model.pipe.scheduler
    mask = box_mask(photo.size, (30, 20, 70, 60))
    try:
        assert set_scheduler(tiny_model, "euler") == "EulerDiscreteScheduler"
        euler = np.asarray(inpaint(tiny_model.pipe, photo, mask, seeds=0, device="cpu", **CALL)[0][0])
        assert tiny_model.pipe.scheduler.config.beta_end == default.config.beta_end  # built from the checkpoint's
        assert set_scheduler(tiny_model, "dpmpp_2m") == "DPMSolverMultistepScheduler"
        assert tiny_model.pipe.scheduler.config.algorithm_type == "dpmsolver++"
        assert set_scheduler(tiny_model, None) == "DDIMScheduler" and tiny_model.pipe.scheduler is default
        ddim = np.asarray(inpaint(tiny_model.pipe, photo, mask, seeds=0, device="cpu", **CALL)[0][0])
        assert (euler != ddim).any()
    finally:
        set_scheduler(tiny_model, None)
    assert tiny_model.pipe is pipe  # the same pipeline: nothing was reloaded


# --- device, precision and memory settings ----------------------------------------------------------------------------


def test_speed_and_memory_settings_are_applied(sd_folder, tmp_path, photo):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    default = load_model(model_config("pretrained", id=str(sd_folder), cache_dir=str(tmp_path), channels_last=False))
    assert {type(p) for p in default.pipe.unet.attn_processors.values()} == {AttnProcessor2_0}  # SDPA
    assert not default.pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not default.pipe.vae.use_tiling and not default.pipe.vae.use_slicing

    tuned = load_model(model_config("pretrained", id=str(sd_folder), cache_dir=str(tmp_path), attention="eager",
                       channels_last=True, vae_tiling=True, vae_slicing=True))
    pipe = tuned.pipe
    assert {type(p) for p in [*pipe.unet.attn_processors.values(), *pipe.vae.attn_processors.values()]} == {AttnProcessor}
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert pipe.vae.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert pipe.vae.use_tiling and pipe.vae.use_slicing
    # Still the same model: eager attention and channels_last change float rounding, not the picture.
    mask = box_mask(photo.size, (30, 20, 70, 60))
    a = np.asarray(inpaint(default.pipe, photo, mask, seeds=0, device="cpu", **CALL)[0][0], dtype=int)
    b = np.asarray(inpaint(pipe, photo, mask, seeds=0, device="cpu", **CALL)[0][0], dtype=int)
    assert np.abs(a - b).max() <= 2


def test_compile_wraps_the_unet(sd_folder, tmp_path):
    # Only the wiring: compiling happens at the first call, takes minutes and needs a C compiler on CPU.
    model = load_model(model_config("pretrained", id=str(sd_folder), cache_dir=str(tmp_path), compile_unet=True))
    assert isinstance(model.pipe.unet, torch._dynamo.eval_frame.OptimizedModule)


@pytest.mark.parametrize("offload, method", [("model", "enable_model_cpu_offload"),
                                             ("sequential", "enable_sequential_cpu_offload")])
def test_offload_is_called_instead_of_moving_to_the_gpu(sd_folder, tmp_path, monkeypatch, offload, method):
    # Offload needs accelerate and a CUDA GPU; this machine has none, so record the call instead of making it.
    from diffusers import StableDiffusionInpaintPipeline

    calls = []
    monkeypatch.setattr(StableDiffusionInpaintPipeline, method, lambda self, device=None: calls.append(device))
    monkeypatch.setattr(StableDiffusionInpaintPipeline, "to", lambda self, *a, **k: calls.append(("to", a, k)))
    model = load_model(model_config("pretrained", id=str(sd_folder), cache_dir=str(tmp_path), device="cuda", offload=offload))
    assert calls == ["cuda"]  # offloaded to cuda, never moved there whole
    assert model.dtype == "float16"  # dtype=auto on CUDA


def test_offload_without_a_cuda_device_is_refused(sd_folder, tmp_path):
    with pytest.raises(ConfigError, match="model.offload=model moves models to a CUDA GPU in turn, got model.device=cpu"):
        check_model_config(model_config("pretrained", id=str(sd_folder), device="cpu", offload="model"))


def test_vae_upcast_is_an_sdxl_setting(sd_folder, sdxl_folder, tmp_path):
    sdxl = load_model(model_config("pretrained", id=str(sdxl_folder), cache_dir=str(tmp_path), vae_upcast=False))
    assert sdxl.pipe.vae.config.force_upcast is False
    check_model_config(model_config("pretrained", id=str(sdxl_folder), vae_upcast=False))
    # Refused from the folder's model_index.json, before anything loads.
    with pytest.raises(ConfigError, match="model.vae_upcast=True needs an SDXL checkpoint .* leave it null"):
        check_model_config(model_config("pretrained", id=str(sd_folder), vae_upcast=True))
    with pytest.raises(ConfigError, match="model.vae_upcast=False needs an SDXL checkpoint .*source=tiny"):
        check_model_config(model_config("tiny", vae_upcast=False))


def test_a_cuda_device_on_a_machine_without_one_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="model.device=cuda but this machine has no such CUDA device"):
        check_model_config(model_config("tiny", device="cuda"))
    with pytest.raises(ConfigError, match="model.device=cuda:1 but"):
        check_model_config(model_config("tiny", device="cuda:1"))


# --- small masks on big photos ----------------------------------------------------------------------------------------


class Spy:
    """Calls the pipeline and keeps what it was given."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self.pipe(**kwargs)


def test_padding_mask_crop_gives_a_small_mask_the_full_resolution(tiny_model):
    rng = np.random.default_rng(2)
    big = Image.fromarray(rng.integers(0, 255, (301, 403, 3), dtype=np.uint8))  # sides not multiples of 8
    mask = box_mask(big.size, (300, 200, 320, 220))  # 20 x 20 pixels of a 403 x 301 photo
    fractions = []
    for crop in (None, 16):
        spy = Spy(tiny_model.pipe)
        results = inpaint(spy, big, mask, seeds=[0, 1], device="cpu", padding_mask_crop=crop, **CALL)
        (call,) = spy.calls  # still one batched call for both seeds
        assert (call["width"], call["height"]) == (64, 48)  # the working size: longer side model.size, multiples of 8
        fractions.append(float((np.asarray(call["mask_image"][0]) > 127).mean()))
        for out, _ in results:
            assert outside_equal_inside_changed(big, mask, out)  # full-size photo, only the mask replaced
    # Without the crop the 20 px box is ~3 px wide at 64 px; with it, the box and 16 px around it fill the model's input.
    assert fractions[0] < 0.01 and fractions[1] > 0.1
