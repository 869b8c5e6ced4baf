"""On a CUDA GPU: the stage in float16 gives finite images, and the same seed gives the same image twice.

Skipped (not failed) without CUDA. Tiny random models, so they run in seconds on any GPU with no download.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from inpaint_sweep.masks import box_mask
from inpaint_sweep.config import model_config
from inpaint_sweep.model import load_model
from inpaint_sweep.tiny_model import build_tiny_sdxl_pipeline

from conftest import prepare_settings, run

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none is visible to torch"),
]
CALL = dict(prompt=["a realistic green dragon"] * 2, negative_prompt=["cartoon"] * 2, height=64, width=64,
            num_inference_steps=2, guidance_scale=7.5, strength=1.0, output_type="np")


def raw_images(pipe, photo, seeds):
    """The decoder's own float output (before any compositing), so a NaN or inf cannot hide behind uint8 rounding."""
    mask = Image.fromarray(box_mask(photo.size, (16, 16, 48, 48)).astype(np.uint8) * 255)
    generators = [torch.Generator("cuda").manual_seed(s) for s in seeds]
    return pipe(image=[photo] * 2, mask_image=[mask] * 2, generator=generators, **CALL).images


@pytest.fixture
def photo_64():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_fp16_on_cuda_is_finite_and_reproducible(kind, tmp_path, photo_64):
    if kind == "sd":
        model = load_model(model_config("tiny", cache_dir=str(tmp_path), device="auto", dtype="auto"))
    else:
        build_tiny_sdxl_pipeline(0).save_pretrained(tmp_path / "sdxl", safe_serialization=True)
        model = load_model(model_config("pretrained", id=str(tmp_path / "sdxl"), device="auto", dtype="auto"))
    assert model.device == "cuda" and model.dtype == "float16"  # what device=auto and dtype=auto pick on a GPU
    assert model.pipe.unet.dtype == torch.float16
    a = raw_images(model.pipe, photo_64, [0, 1])
    b = raw_images(model.pipe, photo_64, [0, 1])
    assert np.isfinite(a).all() and a.std() > 0
    assert (a == b).all()  # same seeds, same pixels
    assert (a[0] != a[1]).any()  # another seed, other pixels


def test_stage_on_cuda_in_fp16(tmp_path):
    from inpaint_sweep.cases import load_cases
    from inpaint_sweep.masks import prepare

    prep = tmp_path / "prep"
    prepare(load_cases("data/cases.yaml"), prep, **prepare_settings(method="box"))
    records = []
    for attempt in ("a", "b"):
        gen = tmp_path / f"gen-{attempt}"
        run(["python", "stages/generate.py", "model.device=auto", "model.dtype=auto", "model.channels_last=true",
             "model.size=128", "steps=4", "seed=[0,1]", "tracking.comet=false", f"paths.prepare={prep}",
             f"paths.generate={gen}", f"paths.cell_store={tmp_path}/store-{attempt}"])  # own store: computed twice
        (path,) = gen.glob("cells/*/record.json")
        records.append(json.loads(path.read_text()))
    for r in records:
        assert r["status"] == "ok" and r["device"] == "cuda" and r["dtype"] == "float16"
        for entry in r["images"]:
            assert not any(np.isnan(v) for v in entry["metrics"].values())  # a NaN from fp16 overflow shows here
    for a, b in zip(records[0]["images"], records[1]["images"]):
        assert (np.asarray(Image.open(a["path"])) == np.asarray(Image.open(b["path"]))).all()
