"""The typed schema of params.yaml, its validation, and composing it outside a Hydra app.

params.yaml is the one config: Hydra's primary config for every stage and DVC's params file. The dataclasses here only
give it types (registered as `schema`, the first entry of its defaults list); the values live in params.yaml and conf/.

Hydra's primary config folder is conf/ (config groups only), and params.yaml itself is registered here in Hydra's
ConfigStore as the primary config `params`: with the repository root as the folder, Hydra would scan every folder in
it (.venv, results, .cache) on each --help and list them as config groups (README "The config").

Every check of a config value lives here (check_config and the check_*_config functions it calls, check_report_config
for the report stage); the stages call them once, at the start, and trust the values afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .errors import ConfigError, RunError  # noqa: F401  (importable from here: `from .config import ConfigError`)

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "conf"  # Hydra's primary config folder: config groups only (model, hydra/*)
PARAMS_FILE = REPO_ROOT / "params.yaml"  # the primary config, read from the top level where DVC wants it
CONFIG_NAME = "params"
SWEEP_AXES = ("steps", "guidance", "strength", "negative_prompt", "seed")
MASK_METHODS = ("box", "ellipse", "yolo", "sam")  # geometric (no weights) | Ultralytics models (local weights)
MASK_ON_MISS = ("error", "box")
# model.* keys applied to the loaded pipeline at each call (the scheduler is swapped in, size and crop are per image):
# changing one never reloads the checkpoint. Every other model.* key, and the preset itself (`model=<name>`), loads
# another pipeline. SweepRunner.model() keys its one resident pipeline on the others (load_settings), and the grid
# sweeper runs the jobs that share them one after the other (forces_reload): each model loads once per process.
MODEL_PER_CALL = ("name", "scheduler", "size", "padding_mask_crop")


@dataclass
class ModelConfig:
    """A model preset (conf/model/<name>.yaml). The defaults are what a user with one CUDA GPU would choose.

    Unlike the other sections, model.* has its defaults here, not in params.yaml: a preset sets only what differs from
    them (the comment beside each field is what --help shows for it). params.yaml has no model: section."""

    name: str = MISSING  # the preset's name: in every cell record and the Comet tag model:<name>
    source: str = MISSING  # tiny (built in) | pretrained (hub id or local folder) | single_file (one checkpoint file)
    id: Optional[str] = None  # hub id, local diffusers folder, or (single_file) the .safetensors file
    revision: Optional[str] = None  # hub branch, tag or commit; recorded in every cell record
    variant: Optional[str] = None  # weights file variant, e.g. fp16 (half the download); null = the full weights
    config: Optional[str] = None  # single_file: local diffusers folder with the component configs (offline); null = hub
    pipeline: str = "sd"  # single_file: sd (StableDiffusionInpaintPipeline) | sdxl (StableDiffusionXLInpaintPipeline)
    size: int = 512  # longer image side fed to the model (multiple of 8): the checkpoint's training resolution
    scheduler: Optional[str] = None  # null = the checkpoint's own | ddim | pndm | euler | euler_a | dpmpp_2m | unipc
    padding_mask_crop: Optional[int] = None  # inpaint a crop around the mask (+ this many photo pixels) at full size
    device: str = "auto"  # auto (cuda, else mps, else cpu) | cpu | cuda | cuda:N | mps
    cpu_threads: Optional[int] = None  # on the CPU: torch's threads; null = all cores but one, which writes images
    dtype: str = "auto"  # auto (float16 on cuda, else float32) | float32 | float16 | bfloat16
    vae_upcast: Optional[bool] = None  # SDXL VAE in float32 for encode/decode (it overflows in fp16); null = checkpoint's
    attention: str = "sdpa"  # sdpa (PyTorch scaled_dot_product_attention, AttnProcessor2_0) | eager (plain matmuls)
    channels_last: bool = True  # UNet and VAE in channels_last memory format (faster convolutions on GPUs)
    compile_unet: bool = False  # torch.compile the UNet: faster steps after the first call at each size compiles
    offload: str = "none"  # none | model (whole models to the GPU in turn) | sequential (layer by layer; slowest)
    vae_tiling: bool = False  # decode in overlapping tiles: big images on small GPUs (seams possible)
    vae_slicing: bool = False  # decode a batch one image at a time: less peak memory for several seeds per call
    allow_unsafe_pickle: bool = False  # true lets pickle weights (.bin/.ckpt) load: they can RUN ANY CODE they hold
    safety_checker: bool = True  # keep the checkpoint's NSFW safety checker (SD 1.x); false drops it explicitly
    seed: int = 0  # tiny: seed of the random weights
    cache_dir: str = ".cache/models"  # tiny: where the built checkpoint is saved


# Every key outside model.* gets its value from params.yaml only: the schema gives it a type and MISSING (`???`), so a
# key deleted from params.yaml is an error, not a silent second default (tests/test_config.py checks).


@dataclass
class MaskConfig:
    method: str = MISSING
    weights: str = MISSING
    sam_weights: str = MISSING
    conf: float = MISSING
    max_det: int = MISSING
    classes: List[str] = MISSING  # names or ids (as text); empty = every class
    on_miss: str = MISSING
    clip_to_box: bool = MISSING
    dilate: int = MISSING
    fill_holes: bool = MISSING
    min_area: int = MISSING
    feather: int = MISSING
    overlay_alpha: float = MISSING


@dataclass
class TrackingConfig:
    comet: bool = MISSING
    project: str = MISSING
    workspace: Optional[str] = MISSING
    offline: bool = MISSING
    image_format: str = MISSING
    image_max_pixels: Optional[int] = MISSING


@dataclass
class PathsConfig:
    prepare: str = MISSING
    generate: str = MISSING
    report: str = MISSING
    cell_store: str = MISSING


@dataclass
class ReportConfig:
    rows: Optional[str] = MISSING
    cols: Optional[str] = MISSING
    cell_size: int = MISSING
    max_megapixels: float = MISSING
    clip_model: Optional[str] = MISSING


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    cases: str = MISSING
    steps: int = MISSING
    guidance: float = MISSING
    strength: float = MISSING
    prompt: Optional[str] = MISSING
    prompt_sr: List[str] = MISSING
    negative_prompt: str = MISSING
    seed: Any = MISSING  # an int, or a list of ints for several images per cell (checked in check_config)
    batch: Optional[str] = MISSING  # set by the grid sweeper: the combinations one Hydra job makes
    mask: MaskConfig = field(default_factory=MaskConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


ConfigStore.instance().store(name="schema", node=Config)
ConfigStore.instance().store(name=CONFIG_NAME, node=OmegaConf.load(PARAMS_FILE))  # composed from conf/ like a file


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


def load_settings(model: Any) -> tuple:
    """The model settings that decide which pipeline is loaded (everything but MODEL_PER_CALL), as a hashable key."""
    plain = OmegaConf.to_container(model) if OmegaConf.is_config(model) else dict(model)
    return tuple(sorted((k, v) for k, v in plain.items() if k not in MODEL_PER_CALL))


def forces_reload(key: str) -> bool:
    """Whether an override of `key` (as written on the command line: model, model.id, +model.x) can change which
    pipeline is loaded."""
    key = key.lstrip("+~")
    return key == "model" or (key.startswith("model.") and key[len("model."):] not in MODEL_PER_CALL)


def model_config(source: str, **settings) -> DictConfig:
    """A typed model config, as a preset would give (for tests and benchmarks): model_config("tiny", size=64)."""
    settings.setdefault("name", source)
    return OmegaConf.structured(ModelConfig(source=source, **settings))


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


def load_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose params.yaml + conf/ exactly as the Hydra apps do (for prepare, report and tests)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=CONFIG_NAME, overrides=list(overrides), return_hydra_config=False)
    return cfg


def to_plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)
