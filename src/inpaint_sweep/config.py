"""The typed schema of params.yaml, its validation, and composing it outside a Hydra app.

params.yaml is the one config: Hydra's primary config for every stage and DVC's params file. The dataclasses here only
give it types (registered as `schema`, the first entry of its defaults list); the values live in params.yaml and conf/.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_NAME = "params"
SWEEP_AXES = ("steps", "guidance", "strength", "negative_prompt", "seed")
MASK_METHODS = ("box", "yolo")


class ConfigError(ValueError):
    """A bad value in the config or the manifest: reported as one line, exit code 2."""


@dataclass
class ModelConfig:
    name: str = MISSING
    source: str = MISSING  # tiny | pretrained | single_file
    id: Optional[str] = None
    revision: Optional[str] = None
    variant: Optional[str] = None
    size: int = 512
    dtype: str = "auto"
    device: str = "auto"
    seed: int = 0
    cache_dir: str = ".cache/models"


@dataclass
class MaskConfig:
    method: str = "box"
    weights: str = "yolov8n-seg.pt"
    conf: float = 0.25
    overlay_alpha: float = 0.45


@dataclass
class TrackingConfig:
    comet: bool = True
    project: str = "inpaint-sweep"
    workspace: Optional[str] = None
    offline: bool = False


@dataclass
class PathsConfig:
    prepare: str = MISSING
    generate: str = MISSING
    report: str = MISSING


@dataclass
class ReportConfig:
    rows: str = "guidance"
    cols: str = "strength"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    cases: str = MISSING
    steps: int = MISSING
    guidance: float = MISSING
    strength: float = MISSING
    negative_prompt: str = ""
    seed: int = 0
    mask: MaskConfig = field(default_factory=MaskConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


ConfigStore.instance().store(name="schema", node=Config)


def check_config(cfg: Any) -> None:
    """Raise ConfigError naming the first bad value, before anything expensive happens."""
    if cfg.steps < 1:
        raise ConfigError(f"steps must be >= 1, got steps={cfg.steps}")
    if not 0 < cfg.strength <= 1:
        raise ConfigError(f"strength must be in (0, 1], got strength={cfg.strength}")
    if int(cfg.steps * cfg.strength) < 1:
        raise ConfigError(
            f"steps x strength must give at least one denoising step, got steps={cfg.steps} strength={cfg.strength}"
        )
    if cfg.guidance < 0:
        raise ConfigError(f"guidance must be >= 0, got guidance={cfg.guidance}")
    if cfg.mask.method not in MASK_METHODS:
        raise ConfigError(f"unknown mask.method={cfg.mask.method!r}; choose one of {', '.join(MASK_METHODS)}")
    if cfg.model.size % 8 or cfg.model.size < 64:
        raise ConfigError(f"model.size must be a multiple of 8 and >= 64, got model.size={cfg.model.size}")


def load_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose params.yaml + conf/ exactly as the Hydra apps do (for prepare, report and tests)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO_ROOT), version_base="1.3"):
        cfg = compose(config_name=CONFIG_NAME, overrides=list(overrides), return_hydra_config=False)
    return cfg


def to_plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)
