"""Load an inpainting pipeline once per process (the built-in tiny model or a real checkpoint) and set its scheduler.

Every checkpoint goes through one call, `AutoPipelineForInpainting.from_pretrained(..., use_safetensors=True)`, which
picks StableDiffusionInpaintPipeline or StableDiffusionXLInpaintPipeline from the checkpoint's model_index.json. A
single .safetensors file has no model_index.json, so `model.pipeline` (sd | sdxl) names the class whose
`from_single_file` reads it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError
from .validate import check_pickle_allowed
from .workspace import shared_path

log = logging.getLogger(__name__)

# model.scheduler -> (diffusers class, settings over the checkpoint's scheduler config)
SCHEDULER_CLASSES = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
SINGLE_FILE_CLASSES = {"sd": "StableDiffusionInpaintPipeline", "sdxl": "StableDiffusionXLInpaintPipeline"}


@dataclass
class LoadedModel:
    pipe: object
    model_id: str
    revision: str
    device: str
    dtype: str
    default_scheduler: object = None  # the checkpoint's own scheduler, restored by set_scheduler(model, None)


def resolve_device(device: str) -> str:
    """The device `model.device` means here: auto -> cuda if available, else mps, else cpu."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_cpu_threads(device: str, threads: int | None) -> int | None:
    """torch's CPU threads for `model.cpu_threads` on `device`: None off the CPU, or where OMP_NUM_THREADS decides;
    null = all cores but one (at least one)."""
    if device != "cpu":
        return None
    if threads is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return int(os.environ["OMP_NUM_THREADS"]) if os.environ["OMP_NUM_THREADS"].isdigit() else None
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores - 1)
    return threads


def use_cpu_threads(device: str, threads: int | None) -> int | None:
    """On the CPU, give torch `threads` threads; None = all cores but one (at least one), unless OMP_NUM_THREADS says.

    The sweep writes each cell's images and its Comet log alongside the next cell's denoising: with torch on every
    core those share a core with one of its threads, and each parallel step waits for the slowest thread
    (BENCHMARKS.md has the measurement).
    Returns the count set, or None where nothing was changed (a GPU, or OMP_NUM_THREADS set).
    """
    import torch

    if device != "cpu" or (threads is None and os.environ.get("OMP_NUM_THREADS")):
        return None
    threads = resolve_cpu_threads(device, threads)
    torch.set_num_threads(threads)
    return threads


def resolve_dtype(dtype: str, device: str) -> str:
    """The dtype `model.dtype` means on `device`: auto -> float16 on CUDA, else float32."""
    if dtype == "auto":
        return "float16" if device.startswith("cuda") else "float32"
    return dtype


def pick_dtype(dtype: str, device: str):
    import torch

    return getattr(torch, resolve_dtype(dtype, device))


def _quiet() -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # the sweep has its own progress bar
    transformers_logging.disable_progress_bar()
    # A prompt longer than CLIP reads: the runner says how many tokens are dropped, once per prompt; the libraries'
    # own lines (a misleading "indexing errors" warning, then one line per call) are silenced.
    for name in ("transformers.tokenization_utils_base", "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint",
                 "diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_inpaint"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _from_pretrained(path_or_id: str, revision: str | None, variant: str | None, torch_dtype, *,
                     allow_unsafe_pickle: bool, safety_checker: bool):
    from diffusers import AutoPipelineForInpainting

    _quiet()
    # safetensors only, unless the user opts in: a pickle checkpoint can run arbitrary code when loaded.
    extra = {} if safety_checker else {"safety_checker": None, "requires_safety_checker": False}
    return AutoPipelineForInpainting.from_pretrained(
        path_or_id, revision=revision, variant=variant, dtype=torch_dtype,
        use_safetensors=None if allow_unsafe_pickle else True, **extra,
    )


def _pickle_only_components(folder: str) -> list[str]:
    """Component folders of a diffusers checkpoint whose weights exist only as pickle files."""
    found = []
    for sub in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        suffixes = {p.suffix for p in sub.iterdir() if p.is_file()}
        if suffixes & {".bin", ".ckpt", ".pt", ".pth"} and ".safetensors" not in suffixes:
            found.append(sub.name)
    return found


def _from_single_file(path: str, config: str | None, pipeline: str, torch_dtype):
    import diffusers

    _quiet()
    if not Path(path).is_file():
        raise ConfigError(f"model.id={path!r} is not a file; model.source=single_file needs a local checkpoint file")
    cls = getattr(diffusers, SINGLE_FILE_CLASSES[pipeline])
    try:
        return cls.from_single_file(path, config=config, dtype=torch_dtype, local_files_only=config is not None)
    except (OSError, ValueError) as e:
        if config is None:
            raise ConfigError(
                f"model.id={path!r} needs its component configs and model.config=null asks the hub for them "
                f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')}); set model.config to a local diffusers folder "
                f"of the same architecture: {' '.join(str(e).split())[:300]}"
            ) from None
        raise ConfigError(
            f"model.id={path!r} did not load as a {cls.__name__} with model.config={config!r}: "
            f"{' '.join(str(e).split())[:300]}"
        ) from None


def _apply_settings(pipe, device: str, vae_upcast, attention, channels_last, compile_unet, offload, vae_tiling,
                    vae_slicing) -> None:
    """Apply the device and speed/memory settings to a freshly loaded pipeline, in the order they must happen."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    # 1. VAE precision. SDXL pipelines read force_upcast to encode/decode in float32; SD 1.x/2 pipelines have no upcast.
    if vae_upcast is not None:
        if "force_upcast" not in pipe.vae.config or not hasattr(pipe, "text_encoder_2"):
            raise ConfigError(
                f"model.vae_upcast={vae_upcast} needs an SDXL pipeline (diffusers upcasts only its VAE), "
                f"got {type(pipe).__name__}"
            )
        pipe.vae.register_to_config(force_upcast=bool(vae_upcast))
    # 2. Attention: diffusers already defaults to AttnProcessor2_0 (PyTorch SDPA); set it explicitly either way.
    processor = AttnProcessor2_0 if attention == "sdpa" else AttnProcessor
    for module in (pipe.unet, pipe.vae):
        module.set_attn_processor(processor())
    # 3. Memory format, before placement: moving a module to a device keeps its tensors' layout.
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    # 4. Placement: all on the device, or CPU offload (accelerate hooks move each model to the GPU when it runs).
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    # 5. VAE memory savers, then compile (last: it wraps the UNet as it is now).
    if vae_tiling:
        pipe.vae.enable_tiling()
    if vae_slicing:
        pipe.vae.enable_slicing()
    if compile_unet:
        pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=True)


def load_model(model) -> LoadedModel:
    """Build the pipeline `model` (a model config: conf/model/<preset>.yaml over the schema) describes.

    The scheduler is not a load setting: set_scheduler swaps it on the loaded pipeline, so a scheduler sweep loads
    the checkpoint once. Callers keep the loaded model (the sweep runner holds one at a time).
    """
    # 1. Device and dtype (the config was validated: config.check_config).
    start = time.perf_counter()
    device = resolve_device(model.device)
    torch_dtype = pick_dtype(model.dtype, device)
    source, id = model.source, model.id

    # 2. Load the weights.
    if source == "tiny":
        from .tiny_model import TINY_MODEL_VERSION, ensure_tiny_checkpoint

        folder = ensure_tiny_checkpoint(shared_path(model.cache_dir), model.seed)
        pipe = _from_pretrained(str(folder), None, None, torch_dtype, allow_unsafe_pickle=False,
                                safety_checker=model.safety_checker)
        model_id, revision = "builtin/tiny-sd-inpaint", f"v{TINY_MODEL_VERSION}-seed{model.seed}"
    elif source == "pretrained":
        try:
            pipe = _from_pretrained(id, model.revision, model.variant, torch_dtype,
                                    allow_unsafe_pickle=model.allow_unsafe_pickle, safety_checker=model.safety_checker)
        except (OSError, ValueError) as e:
            pickled = _pickle_only_components(id) if Path(id).is_dir() and not model.allow_unsafe_pickle else []
            if pickled:
                raise ConfigError(
                    f"model.id={id!r} holds only pickle weights (.bin/.ckpt) for {', '.join(pickled)}, which can run "
                    "arbitrary code when loaded; convert to safetensors, or set model.allow_unsafe_pickle=true "
                    "if you trust its source"
                ) from None
            if Path(id).is_dir():
                raise ConfigError(f"model.id={id!r} is not a loadable diffusers inpainting folder: {e}") from None
            raise ConfigError(
                f"model.id={id!r} is not available offline (no local copy; HF_HUB_OFFLINE="
                f"{os.environ.get('HF_HUB_OFFLINE')}); point model=local model.id=/path/to/folder "
                "at a downloaded checkpoint, or set HF_HUB_OFFLINE=0 with a hub connection to download it"
            ) from None
        model_id, revision = id, model.revision or "local"
    else:  # single_file
        check_pickle_allowed(model)  # checked with the config too; repeated here, where the file is opened
        pipe = _from_single_file(id, model.config, model.pipeline, torch_dtype)
        model_id, revision = id, model.revision or Path(id).name

    # 3. Device, precision, attention, memory format and memory savers.
    _apply_settings(pipe, device, model.vae_upcast, model.attention, model.channels_last, model.compile_unet,
                    model.offload, model.vae_tiling, model.vae_slicing)
    pipe.set_progress_bar_config(disable=True)  # the sweep has its own progress line
    log.info("loaded model %s@%s on %s (%s) in %.1fs", model_id, revision, device, torch_dtype, time.perf_counter() - start)
    return LoadedModel(pipe, model_id, revision, device, str(torch_dtype).removeprefix("torch."), pipe.scheduler)


def set_scheduler(model: LoadedModel, name: str | None) -> str:
    """Give the loaded pipeline the scheduler `name` (null = the checkpoint's own), built from the checkpoint's
    scheduler config; returns the scheduler's class name. Swapping it never reloads the model."""
    import diffusers

    if name is None:
        model.pipe.scheduler = model.default_scheduler
    else:
        class_name, overrides = SCHEDULER_CLASSES[name]
        cls = getattr(diffusers, class_name)
        model.pipe.scheduler = cls.from_config(model.default_scheduler.config, **overrides)
    return type(model.pipe.scheduler).__name__
