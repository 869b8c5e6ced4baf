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
    git_patch: bool = MISSING


@dataclass
class PathsConfig:
    prepare: str = MISSING
    generate: str = MISSING
    report: str = MISSING
    cell_store: str = MISSING
    ratings: str = MISSING


@dataclass
class ReportConfig:
    rows: Optional[str] = MISSING
    cols: Optional[str] = MISSING
    cell_size: int = MISSING
    max_megapixels: float = MISSING
    clip_model: Optional[str] = MISSING


@dataclass
class ReviewConfig:
    host: str = MISSING
    port: int = MISSING
    allow_remote: bool = MISSING
    thumb_width: int = MISSING


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
    review: ReviewConfig = field(default_factory=ReviewConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


ConfigStore.instance().store(name="schema", node=Config)
ConfigStore.instance().store(name=CONFIG_NAME, node=OmegaConf.load(PARAMS_FILE))  # composed from conf/ like a file


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


def load_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose params.yaml + conf/ exactly as the Hydra apps do (for prepare, report and tests)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=CONFIG_NAME, overrides=list(overrides), return_hydra_config=False)
    return cfg


def to_plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


# The checks live in validate.py; these names stay importable from here.
from .validate import (check_config, check_mask_config, check_model_config, check_pickle_allowed,  # noqa: E402,F401
                       check_report_config, check_tracking_config)
