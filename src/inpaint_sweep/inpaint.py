"""generate: one grid cell = one pipeline call on one case, composited back onto the untouched photo."""

from __future__ import annotations

import time

import numpy as np
from PIL import Image


def working_size(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """(width, height) the model runs at: longer side `longest`, aspect kept, both sides multiples of 8."""
    width, height = size
    scale = longest / max(width, height)
    return max(8, int(round(width * scale / 8)) * 8), max(8, int(round(height * scale / 8)) * 8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two float arrays in [0, 1] (inf when identical)."""
    mse = float(np.mean((a - b) ** 2)) if a.size else 0.0
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def composite(original: Image.Image, generated: Image.Image, mask: np.ndarray) -> Image.Image:
    """Generated pixels inside the mask, the original's pixels (bit for bit) everywhere else."""
    gen = np.asarray(generated.convert("RGB").resize(original.size, Image.Resampling.LANCZOS))
    out = np.where(mask[:, :, None], gen, np.asarray(original.convert("RGB")))
    return Image.fromarray(out)


def inpaint(
    pipe,
    image: Image.Image,
    mask: np.ndarray,
    prompt: str,
    negative_prompt: str,
    steps: int,
    guidance: float,
    strength: float,
    seed: int,
    size: int,
    device: str = "cpu",
) -> tuple[Image.Image, dict]:
    """Inpaint `mask` (bool, photo size) of `image`; return the composited full-size image and its metrics."""
    import torch

    # 1. Resize photo and mask to the model's working size (multiples of 8).
    width, height = working_size(image.size, size)
    small = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    small_mask = Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.Resampling.NEAREST)

    # 2. Denoise with the cell's own generator, so this cell alone reproduces its pixels.
    generator = torch.Generator(device="cpu" if device == "mps" else device).manual_seed(int(seed))
    start = time.perf_counter()
    raw = pipe(
        prompt=prompt,
        negative_prompt=negative_prompt or None,
        image=small,
        mask_image=small_mask,
        height=height,
        width=width,
        num_inference_steps=int(steps),
        guidance_scale=float(guidance),
        strength=float(strength),
        generator=generator,
        output_type="np",
    ).images[0]
    seconds = time.perf_counter() - start

    # 3. Measure how far the raw decoder output drifted where it should not have changed anything.
    inside = np.asarray(small_mask) > 127
    reference = np.asarray(small, dtype=np.float32) / 255.0
    outside_diff = raw[~inside] - reference[~inside]
    metrics = {
        "seconds": round(seconds, 4),
        "drift_mae": round(float(np.abs(outside_diff).mean()), 6) if outside_diff.size else 0.0,
        "drift_psnr": round(psnr(raw[~inside], reference[~inside]), 4),
        "change_inside_mae": round(float(np.abs(raw[inside] - reference[inside]).mean()), 6) if inside.any() else 0.0,
    }

    # 4. Paste the generated region back onto the full-size photo.
    generated = Image.fromarray((np.clip(raw, 0, 1) * 255).round().astype(np.uint8))
    return composite(image, generated, mask), metrics
