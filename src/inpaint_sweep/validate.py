"""Every check of the input, in one place, run before anything is written: the command line (before Hydra starts),
each config value, the launcher's worker counts, and the prepared cases against every combination's prompts.

A bad input raises ConfigError: one line naming the value, exit code 2 (cli.one_line_errors). The grid sweeper runs
these on every combination of the grid before a cell is planned (sweep.check_multirun); prepare and report run the
checks of the keys they read.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .config import MASK_METHODS, MASK_ON_MISS
from .errors import ConfigError


def check_config(cfg: Any) -> None:
    """Raise ConfigError naming the first bad value, before anything expensive happens."""
    if cfg.steps < 1:
        raise ConfigError(f"steps must be >= 1, got steps={cfg.steps}")
    if not 0 < cfg.strength <= 1:
        raise ConfigError(f"strength must be in (0, 1], got strength={cfg.strength:g}")
    if int(cfg.steps * cfg.strength) < 1:
        raise ConfigError(
            f"steps x strength must give at least one denoising step, got steps={cfg.steps} strength={cfg.strength:g}"
        )
    seed = cfg.seed
    seeds = list(seed) if OmegaConf.is_list(seed) or isinstance(seed, list) else [seed]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"seed must be a non-negative integer or a non-empty list of them, got seed={seed}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seed list has duplicates, got seed={seed}")
    if cfg.guidance < 0:
        raise ConfigError(f"guidance must be >= 0, got guidance={cfg.guidance:g}")
    sr = list(cfg.prompt_sr)
    if sr and (not sr[0] or len(set(sr)) != len(sr)):
        raise ConfigError(f"prompt_sr is [text to find, replacement, ...]: a non-empty first value and no duplicates, "
                          f"got prompt_sr={sr}")
    check_mask_config(cfg.mask)
    check_model_config(cfg.model)
    check_tracking_config(cfg.tracking)


MODEL_SOURCES = ("tiny", "pretrained", "single_file")
SCHEDULERS = ("ddim", "pndm", "euler", "euler_a", "dpmpp_2m", "unipc")  # lms needs scipy, which is not installed
DTYPES = ("auto", "float32", "float16", "bfloat16")
ATTENTION = ("sdpa", "eager")
OFFLOAD = ("none", "model", "sequential")
SINGLE_FILE_PIPELINES = ("sd", "sdxl")


def check_model_config(model: Any) -> None:
    """Raise ConfigError naming the first bad model.* value (generate's model settings)."""

    def choose(key, allowed):
        if model[key] not in allowed:
            shown = ", ".join("null" if a is None else a for a in allowed)
            raise ConfigError(f"unknown model.{key}={model[key]!r}; choose one of {shown}")

    choose("source", MODEL_SOURCES)
    if model.size % 8 or model.size < 64:
        raise ConfigError(f"model.size must be a multiple of 8 and >= 64, got model.size={model.size}")
    choose("scheduler", (None, *SCHEDULERS))
    choose("dtype", DTYPES)
    choose("attention", ATTENTION)
    choose("offload", OFFLOAD)
    choose("pipeline", SINGLE_FILE_PIPELINES)
    device = str(model.device)
    if not (device in ("auto", "cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError(f"unknown model.device={device!r}; choose auto, cpu, cuda, cuda:N or mps")
    if model.offload != "none" and device in ("cpu", "mps"):
        raise ConfigError(f"model.offload={model.offload} moves models to a CUDA GPU in turn, got model.device={device}")
    if model.cpu_threads is not None and model.cpu_threads < 1:
        raise ConfigError(f"model.cpu_threads must be null or >= 1, got model.cpu_threads={model.cpu_threads}")
    if model.padding_mask_crop is not None and model.padding_mask_crop < 0:
        raise ConfigError(
            f"model.padding_mask_crop must be null or >= 0 pixels, got model.padding_mask_crop={model.padding_mask_crop}"
        )
    if model.source in ("pretrained", "single_file") and not model.id:
        what = "a .safetensors file" if model.source == "single_file" else "a hub id or a local folder"
        raise ConfigError(f"model.id is required for model.source={model.source}: {what}, e.g. model.id=/path/to/it")
    check_pickle_allowed(model)
    if model.vae_upcast is not None and not _is_sdxl(model):
        raise ConfigError(f"model.vae_upcast={model.vae_upcast} needs an SDXL checkpoint (diffusers upcasts only its "
                          f"VAE), got model.{'source=tiny' if model.source == 'tiny' else f'id={model.id!r}'}; "
                          "leave it null")
    if device.startswith("cuda") and not _cuda_devices(int(device[5:] or 0) + 1):
        raise ConfigError(f"model.device={device} but this machine has no such CUDA device; use model.device=auto or cpu")
    if device == "mps" and not _mps_available():
        raise ConfigError("model.device=mps but this machine has no Apple GPU (MPS); use model.device=auto or cpu")


def check_pickle_allowed(model: Any) -> None:
    """model.source=single_file: a file that is not .safetensors is a pickle (.ckpt/.bin), which runs any code it holds
    when loaded; refused unless model.allow_unsafe_pickle=true. (A pretrained folder's pickle weights are refused by
    the load itself: diffusers is asked for safetensors only.) load_model calls this too, just before the load."""
    if model.source == "single_file" and Path(str(model.id)).suffix != ".safetensors" and not model.allow_unsafe_pickle:
        raise ConfigError(
            f"model.id={model.id!r} is not a .safetensors file; pickle checkpoints (.ckpt/.bin) can run arbitrary code "
            "when loaded: convert it, or set model.allow_unsafe_pickle=true if you trust its source"
        )


def _is_sdxl(model: Any) -> bool:
    """Whether the checkpoint is SDXL, read from its files without loading it (hub ids: from the preset's name)."""
    if model.source == "single_file":
        return model.pipeline == "sdxl"
    if model.source == "tiny":
        return False
    index = Path(str(model.id)) / "model_index.json"
    if index.is_file():
        return "XL" in index.read_text()
    return "xl" in str(model.id).lower()


def _cuda_devices(needed: int) -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.device_count() >= needed


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


IMAGE_FORMATS = ("png", "webp", "jpeg")


def check_tracking_config(tracking: Any) -> None:
    if tracking.image_format not in IMAGE_FORMATS:
        raise ConfigError(f"unknown tracking.image_format={tracking.image_format!r}; choose one of "
                          f"{', '.join(IMAGE_FORMATS)}")
    if tracking.image_max_pixels is not None and tracking.image_max_pixels < 4096:
        raise ConfigError(f"tracking.image_max_pixels must be null or >= 4096 (64x64), got "
                          f"tracking.image_max_pixels={tracking.image_max_pixels}")


def check_mask_config(mask: Any) -> None:
    """Raise ConfigError naming the first bad mask.* value (prepare's settings)."""
    if mask.method not in MASK_METHODS:
        raise ConfigError(f"unknown mask.method={mask.method!r}; choose one of {', '.join(MASK_METHODS)}")
    if mask.on_miss not in MASK_ON_MISS:
        raise ConfigError(f"unknown mask.on_miss={mask.on_miss!r}; choose one of {', '.join(MASK_ON_MISS)}")
    if not 0 <= mask.conf <= 1:
        raise ConfigError(f"mask.conf must be in [0, 1], got mask.conf={mask.conf}")
    if mask.max_det < 1:
        raise ConfigError(f"mask.max_det must be >= 1, got mask.max_det={mask.max_det}")
    for key in ("dilate", "min_area", "feather"):
        if mask[key] < 0:
            raise ConfigError(f"mask.{key} must be >= 0 pixels, got mask.{key}={mask[key]}")
    if not 0 <= mask.overlay_alpha <= 1:
        raise ConfigError(f"mask.overlay_alpha must be in [0, 1], got mask.overlay_alpha={mask.overlay_alpha}")
    classes = list(mask.classes)
    if any(not str(c).strip() for c in classes):
        raise ConfigError(f"mask.classes holds an empty name, got mask.classes={classes}")
    if classes and mask.method == "sam":
        raise ConfigError(
            f"mask.classes filters YOLO classes and SAM has none; got mask.classes={classes} with mask.method=sam"
        )


def check_report_config(report: Any) -> None:
    """Raise ConfigError naming the first bad report.* value that can be judged before reading the cells (whether
    rows and cols name axes that varied is known only then: report.grid_axes)."""
    from PIL import Image

    # Pillow refuses to open an image over 2 x MAX_IMAGE_PIXELS and warns above it: grids stay under, so anyone can
    # open them.
    most = Image.MAX_IMAGE_PIXELS / 1e6
    if report.rows is not None and report.rows == report.cols:
        raise ConfigError(f"report.rows and report.cols must differ, both are {report.rows!r}")
    if report.cell_size < 16:
        raise ConfigError(f"report.cell_size must be >= 16 pixels, got report.cell_size={report.cell_size}")
    if not 0 < report.max_megapixels <= most:
        raise ConfigError(f"report.max_megapixels must be in (0, {most:.0f}], got "
                          f"report.max_megapixels={report.max_megapixels:g}")




LOOPBACK = ("127.0.0.1", "::1", "localhost")
TOKEN_CHARS = 16  # the least a token for a non-loopback review app may have


def check_review_config(review: Any, token: str | None) -> None:
    """Raise ConfigError naming the first bad review.* value: a port out of range, a tiny thumbnail, or a host other
    than loopback without review.allow_remote=true and a token of TOKEN_CHARS or more in INPAINT_REVIEW_TOKEN."""
    if not 0 <= review.port <= 65535:
        raise ConfigError(f"review.port must be in 0..65535 (0 = a free port), got review.port={review.port}")
    if review.thumb_width < 64:
        raise ConfigError(f"review.thumb_width must be >= 64 pixels, got review.thumb_width={review.thumb_width}")
    if review.host not in LOOPBACK:
        if not review.allow_remote:
            raise ConfigError(f"review.host={review.host!r} is not loopback: others on the network could answer in "
                              "your name; add review.allow_remote=true and set INPAINT_REVIEW_TOKEN to a secret")
        if not token or len(token) < TOKEN_CHARS:
            raise ConfigError(f"review.host={review.host!r} with review.allow_remote=true needs a token of at least "
                              f"{TOKEN_CHARS} characters in INPAINT_REVIEW_TOKEN")


def check_inputs(configs: list[DictConfig]) -> None:
    """Every combination's config is valid, the prepared cases exist, and every combination's prompts apply to each
    case (prompt_sr finds its text)."""
    from .cases import prompt_variants
    from .records import load_prepared

    for cfg in configs:
        check_config(cfg)
    cases = load_prepared(configs[0].paths.prepare)
    for cfg in configs:
        for case in cases:
            prompt_variants(case.id, case.prompt, cfg.prompt, cfg.negative_prompt, cfg.prompt_sr)


def check_launcher(launcher: DictConfig) -> None:
    """The parallel launchers' worker counts, which they would otherwise refuse with a traceback mid-start."""
    n_jobs = launcher.get("n_jobs")
    if n_jobs is not None and (n_jobs == 0 or n_jobs < -1):
        raise ConfigError(f"hydra.launcher.n_jobs must be >= 1 (or -1: one job per CPU core), got "
                          f"hydra.launcher.n_jobs={n_jobs}")


def precheck_command_line(argv: list[str]) -> None:
    """Type-check the command line's plain overrides (steps=abc, a typo'd key) before Hydra starts, so they fail with
    the same one-line error and exit code 2 as every other bad value; Hydra's own report spans several lines.
    A swept preset (model=a,b) is checked with each of its choices; glob() choices and hydra.* are left to Hydra."""
    from hydra.errors import OverrideParseException

    from .config import load_config
    from .grid import grid_values, parse

    for arg in argv:  # `+key=value` adds a key the schema does not know: nothing would read it
        if arg.startswith("+") and "=" in arg and not arg.lstrip("+").startswith("hydra"):
            key = arg.lstrip("+").split("=", 1)[0]
            raise ConfigError(f"unknown key {key!r} in {arg!r}: the typed config has no such key (nothing would read "
                              "it); see `python stages/generate.py --help` for the keys")

    # 1. Texts with spaces, commas or brackets need Hydra's quotes; say which quotes, in one line.
    for i, arg in enumerate(argv):
        if i and "=" not in arg and not arg.startswith("-") and "=" in argv[i - 1] and not argv[i - 1].startswith("-"):
            words = list(itertools.takewhile(lambda a: "=" not in a and not a.startswith("-"), argv[i:]))
            raise ConfigError(f"{arg!r} is not key=value: the shell split {' '.join([argv[i - 1], *words])!r} at its "
                              f"spaces; {_quoting(argv[i - 1] + ' ' + ' '.join(words))}")
    for arg in argv:
        if "=" in arg and not arg.startswith("-"):
            try:
                parse([arg])
            except OverrideParseException as e:
                raise ConfigError(f"cannot read {arg!r} ({str(e).splitlines()[0]}); {_quoting(arg)}") from None

    # 2. Types and keys.
    overrides = [a for a in argv if "=" in a and not a.startswith(("-", "+", "~", "hydra"))]
    groups = [a for a in overrides if a.split("=", 1)[0] == "model"]
    plain = grid_values({}, [a for a in overrides if a not in groups])
    if any("glob(" in g for g in groups):
        return  # glob() needs the preset folder's listing: Hydra checks it
    choices = [[f"model={c}" for c in found] for found in grid_values({}, groups[-1:]).values()]
    for group_overrides in itertools.product(*choices):
        base = load_config(list(group_overrides))
        for key, found in plain.items():
            for value in found:
                OmegaConf.update(base.copy(), key, value, merge=False)


def _quoting(override: str) -> str:
    key, value = override.split("=", 1)
    return (f"a text holding spaces, commas or brackets goes in single quotes inside double quotes: "
            f"{key}=\"'{value.strip()}'\" (several: {key}=\"'one, two','three'\")")
