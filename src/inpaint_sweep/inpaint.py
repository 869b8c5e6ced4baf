"""generate: one grid cell = one pipeline call on one case, composited back onto the untouched photo."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def working_size(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """(width, height) the model runs at: longer side `longest`, aspect kept, both sides multiples of 8."""
    width, height = size
    scale = longest / max(width, height)
    return max(8, int(round(width * scale / 8)) * 8), max(8, int(round(height * scale / 8)) * 8)


def seed_list(seed) -> list[int]:
    """A cell's seeds as a list: `seed` is one int or a list of them."""
    return [int(seed)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]


def dropped_tokens(pipe, text: str) -> int:
    """How many of `text`'s tokens the pipeline's text encoder(s) never see: CLIP reads at most
    `tokenizer.model_max_length` tokens (77, start and end tokens included) and diffusers cuts the rest."""
    dropped = 0
    for tokenizer in (getattr(pipe, "tokenizer", None), getattr(pipe, "tokenizer_2", None)):
        if tokenizer is not None and text:
            count = len(tokenizer(text, truncation=False, verbose=False).input_ids)
            dropped = max(dropped, count - tokenizer.model_max_length)
    return max(0, dropped)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two float arrays in [0, 1] (inf when identical)."""
    mse = float(np.mean((a - b) ** 2)) if a.size else 0.0
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def composite(original: Image.Image, generated: Image.Image, mask: np.ndarray, box=None,
              soft: np.ndarray | None = None) -> Image.Image:
    """Generated pixels inside the mask, the original's pixels (bit for bit) everywhere else.

    `box` (x1, y1, x2, y2) is the region of the photo `generated` shows (default: all of it); it must hold the mask.
    `soft` (uint8, photo size, 0 wherever `mask` is False: prepare's soft_mask.png) blends instead of cutting hard:
    out = a * generated + (1 - a) * original with a = soft / 255, so the seam is feathered and outside the mask
    (a = 0) the original stays exact. Only the mask's bounding box is computed: nothing else can change.
    """
    x1, y1, x2, y2 = box or (0, 0, *original.size)
    out = np.array(original.convert("RGB"))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return Image.fromarray(out)
    # The mask's bounding box, within the generated region.
    r0, r1, c0, c1 = max(rows[0], y1), min(rows[-1] + 1, y2), max(cols[0], x1), min(cols[-1] + 1, x2)
    if r0 >= r1 or c0 >= c1:
        return Image.fromarray(out)
    pasted = np.asarray(generated.convert("RGB").resize((x2 - x1, y2 - y1), Image.Resampling.LANCZOS))
    pasted = pasted[r0 - y1:r1 - y1, c0 - x1:c1 - x1]
    source, inside = out[r0:r1, c0:c1], mask[r0:r1, c0:c1]
    if soft is None:
        out[r0:r1, c0:c1] = np.where(inside[:, :, None], pasted, source)
        return Image.fromarray(out)
    alpha = np.where(inside, soft[r0:r1, c0:c1], 0).astype(np.float32)[:, :, None] / 255.0
    blended = alpha * pasted.astype(np.float32) + (1.0 - alpha) * source
    out[r0:r1, c0:c1] = np.where(alpha > 0, np.round(blended), source).astype(np.uint8)
    return Image.fromarray(out)


def reset_peak_memory(device: str) -> None:
    """Start a new peak: torch's CUDA allocator peak, or (Linux) the process's resident-set high-water mark."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5 = reset VmHWM to the current RSS (Linux >= 4.0)
        except OSError:
            pass  # elsewhere the peak stays the process's lifetime maximum


def peak_memory_mb(device: str) -> float:
    """CUDA: the most memory torch's allocator held since the reset. CPU: the process's peak resident set since the
    reset, which includes the loaded model, Python and every other thread, not just this call."""
    import resource

    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def inpaint(pipe, image: Image.Image, mask: np.ndarray, *args, soft_mask: np.ndarray | None = None,
            **kwargs) -> list[tuple[Image.Image, dict]]:
    """Inpaint `mask` (bool, photo size) of `image` once per seed, in one batched pipeline call: `denoise` (same
    arguments), then `to_photo` for each seed (blending with `soft_mask` if given).

    Returns one (composited full-size image, metrics) per seed; each equals what a single-seed call gives.
    """
    raws, metrics, box, _ = denoise(pipe, image, mask, *args, **kwargs)
    return [(to_photo(image, raw, mask, box, soft_mask), m) for raw, m in zip(raws, metrics)]


def denoise(
    pipe,
    image: Image.Image,
    mask: np.ndarray,
    prompt: str,
    negative_prompt: str,
    steps: int,
    guidance: float,
    strength: float,
    seeds: int | list[int],
    size: int,
    device: str = "cpu",
    padding_mask_crop: int | None = None,
) -> tuple[list[np.ndarray], list[dict], tuple[int, int, int, int], list[bool | None]]:
    """The model's part of `inpaint`: one batched pipeline call at the working size.

    Returns the raw outputs (float arrays in [0, 1], one per seed), their metrics, the box of the photo they show,
    and the safety checker's verdict per image (None without a checker; a flagged image comes back black);
    `to_photo` turns each raw output into the full-size result.
    """
    import torch

    seeds = seed_list(seeds)

    # 1. Resize photo and mask to the model's working size (multiples of 8). With padding_mask_crop, only the box
    #    diffusers' padding_mask_crop would pick (the mask's bounds grown by that many photo pixels, then to the working
    #    aspect) is resized, from the full-size photo: a small mask on a big photo gets the model's full resolution.
    #    Cropping here rather than in the pipeline keeps the batched call (diffusers crops one PIL image only).
    width, height = working_size(image.size, size)
    full_mask = Image.fromarray(mask.astype(np.uint8) * 255)
    box = (0, 0, *image.size)
    if padding_mask_crop is not None and mask.any():
        from diffusers.image_processor import VaeImageProcessor

        box = VaeImageProcessor.get_crop_region(full_mask, width, height, pad=padding_mask_crop)
    small = image.convert("RGB").crop(box).resize((width, height), Image.Resampling.LANCZOS)
    small_mask = full_mask.crop(box).resize((width, height), Image.Resampling.NEAREST)

    # 2. Denoise all seeds in one call, one generator per image, so any image reproduces alone from its seed.
    generator_device = "cpu" if device == "mps" else device
    generators = [torch.Generator(device=generator_device).manual_seed(s) for s in seeds]
    reset_peak_memory(device)
    start = time.perf_counter()
    # The batch repeats prompt, image and mask instead of using num_images_per_prompt: diffusers VAE-encodes a
    # single image with the first generator only, so image i would not equal a single-seed run of seed i.
    n = len(seeds)
    output = pipe(
        prompt=[prompt] * n,
        negative_prompt=[negative_prompt] * n if negative_prompt else None,
        image=[small] * n,
        mask_image=[small_mask] * n,
        height=height,
        width=width,
        num_inference_steps=int(steps),
        guidance_scale=float(guidance),
        strength=float(strength),
        generator=generators,
        output_type="np",
    )
    raws = output.images
    flagged = getattr(output, "nsfw_content_detected", None)
    nsfw = [bool(f) for f in flagged] if flagged is not None else [None] * n
    seconds = (time.perf_counter() - start) / len(seeds)
    peak_mb = peak_memory_mb(device)  # of the whole batched call, shared by its images

    # 3. Measure how far the raw decoder output drifted where it should not have changed anything.
    inside = np.asarray(small_mask) > 127
    reference = np.asarray(small, dtype=np.float32) / 255.0
    metrics = []
    for raw in raws:
        outside_diff = raw[~inside] - reference[~inside]
        metrics.append({
            "seconds": round(seconds, 4),
            "peak_memory_mb": round(peak_mb, 1),
            "drift_mae": round(float(np.abs(outside_diff).mean()), 6) if outside_diff.size else 0.0,
            "drift_psnr": round(psnr(raw[~inside], reference[~inside]), 4),
            "change_inside_mae": round(float(np.abs(raw[inside] - reference[inside]).mean()), 6) if inside.any() else 0.0,
        })
    return list(raws), metrics, box, nsfw


def to_photo(image: Image.Image, raw: np.ndarray, mask: np.ndarray, box, soft_mask: np.ndarray | None = None):
    """Paste a raw output of `denoise` (the region `box` of the photo) back onto the full-size photo."""
    generated = Image.fromarray((np.clip(raw, 0, 1) * 255).round().astype(np.uint8))
    return composite(image, generated, mask, box, soft_mask)
