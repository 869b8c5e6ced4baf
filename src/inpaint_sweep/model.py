"""Load an inpainting pipeline once per process: the built-in tiny model or a diffusers checkpoint."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError

log = logging.getLogger(__name__)
LOAD_COUNT = 0  # pipelines built in this process; tests assert a whole multirun loads exactly one
_CACHE: dict[tuple, "LoadedModel"] = {}


@dataclass
class LoadedModel:
    pipe: object
    model_id: str
    revision: str
    device: str
    dtype: str


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        dtype = "float16" if device == "cuda" else "float32"
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ConfigError(f"model.dtype must be auto, float32, float16 or bfloat16, got model.dtype={dtype!r}")
    return getattr(torch, dtype)


def _from_pretrained(path_or_id: str, revision: str | None, variant: str | None, torch_dtype):
    from diffusers import AutoPipelineForInpainting
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # the sweep has its own progress bar
    transformers_logging.disable_progress_bar()

    # safetensors only: a pickle checkpoint can run arbitrary code when loaded.
    return AutoPipelineForInpainting.from_pretrained(
        path_or_id, revision=revision, variant=variant, dtype=torch_dtype, use_safetensors=True
    )


def load_model(
    source: str,
    id: str | None = None,
    revision: str | None = None,
    variant: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    seed: int = 0,
    cache_dir: str = ".cache/models",
) -> LoadedModel:
    """Build the pipeline, or return the one this process already built with the same arguments."""
    global LOAD_COUNT
    key = (source, id, revision, variant, dtype, device, seed, str(cache_dir))
    if key in _CACHE:
        return _CACHE[key]

    start = time.perf_counter()
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    if source == "tiny":
        from .tiny_model import TINY_MODEL_VERSION, ensure_tiny_checkpoint

        folder = ensure_tiny_checkpoint(cache_dir, seed)
        pipe = _from_pretrained(str(folder), None, None, torch_dtype)
        model_id, revision = "builtin/tiny-sd-inpaint", f"v{TINY_MODEL_VERSION}-seed{seed}"
    elif source == "pretrained":
        if not id:
            raise ConfigError("model.id is required for a pretrained model: a hub id or a local folder")
        try:
            pipe = _from_pretrained(id, revision, variant, torch_dtype)
        except (OSError, ValueError) as e:
            if Path(id).is_dir():
                raise ConfigError(f"model.id={id!r} is not a loadable diffusers inpainting folder: {e}") from None
            raise ConfigError(
                f"model.id={id!r} is not available offline (no local copy; HF_HUB_OFFLINE="
                f"{__import__('os').environ.get('HF_HUB_OFFLINE')}); point model=local model.id=/path/to/folder "
                "at a downloaded checkpoint, or set HF_HUB_OFFLINE=0 with a hub connection to download it"
            ) from None
        model_id, revision = id, revision or "local"
    else:
        raise ConfigError(f"unknown model.source={source!r}; choose tiny or pretrained")

    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)  # the sweep has its own progress line
    LOAD_COUNT += 1
    log.info("loaded model %s@%s on %s (%s) in %.1fs", model_id, revision, device, torch_dtype, time.perf_counter() - start)
    loaded = LoadedModel(pipe, model_id, revision, device, str(torch_dtype).removeprefix("torch."))
    _CACHE[key] = loaded
    return loaded
