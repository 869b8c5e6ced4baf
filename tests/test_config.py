"""The config composes, validates, every preset loads, and no value is written in two files that can drift."""

import ast
import re
from pathlib import Path

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from inpaint_sweep.config import REPO_ROOT, SWEEP_AXES, ConfigError, check_config, load_config

PARAMS = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
DVC = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
PRESETS = sorted(p.stem for p in (REPO_ROOT / "conf" / "model").glob("*.yaml"))


def test_default_config_composes_and_validates():
    cfg = load_config()
    check_config(cfg)
    assert cfg.model.name == "tiny" and cfg.mask.method == "box"
    assert set(SWEEP_AXES) <= set(cfg.keys())


@pytest.mark.parametrize("preset", PRESETS)
def test_every_model_preset_composes(preset):
    required_id = {"local": "/some/folder", "single_file": "/some/model.safetensors"}  # presets with id: ???
    overrides = [f"model={preset}"] + ([f"model.id={required_id[preset]}"] if preset in required_id else [])
    cfg = load_config(overrides)
    check_config(cfg)
    assert cfg.model.name == preset
    assert cfg.model.source in ("tiny", "pretrained", "single_file")


def test_default_grid_sweeps_the_four_axes():
    grid = PARAMS["hydra"]["sweeper"]["params"]
    assert set(grid) == {"steps", "guidance", "strength", "negative_prompt"}
    assert all(len(str(v).split(",")) >= 2 for v in grid.values())


def test_typo_in_override_is_an_error():
    with pytest.raises(ConfigCompositionException, match="guidanse"):
        load_config(["guidanse=5"])


def test_wrong_type_is_an_error():
    with pytest.raises((ValidationError, ConfigCompositionException)):
        load_config(["steps=many"])


@pytest.mark.parametrize(
    "override, words",
    [
        ("steps=0", "steps must be >= 1, got steps=0"),
        ("strength=0", "strength must be in (0, 1], got strength=0"),
        ("strength=1.5", "strength must be in (0, 1], got strength=1.5"),
        ("guidance=-1", "guidance must be >= 0, got guidance=-1"),
        ("mask.method=lasso", "unknown mask.method='lasso'"),
        ("model.size=300", "model.size must be a multiple of 8"),
    ],
)
def test_bad_values_are_named(override, words):
    with pytest.raises(ConfigError) as e:
        check_config(load_config([override]))
    assert words in str(e.value)


def test_steps_times_strength_must_leave_one_step():
    with pytest.raises(ConfigError, match="steps=2 strength=0.3"):
        check_config(load_config(["steps=2", "strength=0.3"]))


def test_no_interpolation_in_params_yaml():
    # DVC resolves ${...} in params.yaml itself; one it cannot resolve breaks `dvc exp run -S`.
    def values(node):
        if isinstance(node, dict):
            for v in node.values():
                yield from values(v)
        elif isinstance(node, list):
            for v in node:
                yield from values(v)
        else:
            yield node

    assert not [v for v in values(PARAMS) if "${" in str(v)]


def test_hydra_output_dirs_live_inside_the_generate_output():
    generate = PARAMS["paths"]["generate"]
    for key in ("run", "sweep"):
        assert PARAMS["hydra"][key]["dir"].startswith(generate + "/"), key
    assert PARAMS["hydra"]["job"]["chdir"] is False


def test_dvc_yaml_reads_paths_and_params_from_params_yaml():
    text = (REPO_ROOT / "dvc.yaml").read_text()
    for value in PARAMS["paths"].values():
        assert value not in text, f"{value} is written in dvc.yaml too; use ${{paths.*}}"
    for name, stage in DVC["stages"].items():
        for key in stage.get("params", []):
            node = PARAMS
            for part in key.split("."):
                assert part in node, f"stage {name} lists param {key!r}, which params.yaml lacks"
                node = node[part]


def _imported_package_modules(script: Path, seen=None) -> set[str]:
    """inpaint_sweep modules a script imports, followed transitively through the package."""
    seen = set() if seen is None else seen
    tree = ast.parse(script.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative import inside the package
                names = [node.module] if node.module else [a.name for a in node.names]
            elif node.module and node.module.startswith("inpaint_sweep"):
                names = [node.module.removeprefix("inpaint_sweep").lstrip(".")] + [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.removeprefix("inpaint_sweep.") for a in node.names if a.name.startswith("inpaint_sweep")]
        for name in names:
            path = REPO_ROOT / "src" / "inpaint_sweep" / f"{name}.py"
            if name and path.is_file() and name not in seen:
                seen.add(name)
                _imported_package_modules(path, seen)
    seen.add("__init__")
    seen.add("offline")  # imported by __init__
    return seen


@pytest.mark.parametrize("stage", sorted(DVC["stages"]))
def test_dvc_deps_list_every_module_the_stage_imports(stage):
    deps = set(DVC["stages"][stage]["deps"])
    script = re.search(r"stages/\w+\.py", DVC["stages"][stage]["cmd"]).group(0)
    assert script in deps
    for module in _imported_package_modules(REPO_ROOT / script):
        assert f"src/inpaint_sweep/{module}.py" in deps, f"{stage} imports inpaint_sweep.{module}"


@pytest.mark.parametrize(
    "stage, words",
    [
        ("prepare", ["mask.method=box", "# box | ellipse", "cases=data/cases.yaml", "paths.prepare="]),
        ("generate", ["guidance=7.5", "# classifier-free guidance scale", "model.size=", "hydra.sweeper.params.guidance=",
                      *PRESETS, "hydra/launcher:", "joblib", "slurm", "hydra/sweeper:"]),
        ("report", ["report.rows=null", "# axis down the rows", "paths.report="]),
        ("review", ["review.port=0", "# 0 = a free port", "paths.ratings=data/ratings", "INPAINT_REVIEW_TOKEN"]),
    ],
)
def test_every_stage_answers_help_fast_with_its_own_keys(stage, words):
    """--help is a subprocess like a user's (Hydra's help for generate): exit 0, the stage's keys with their comments
    and the real config groups, never a folder of the repository (.venv, results, .cache) listed as a group."""
    from conftest import run

    result = run(["python", f"stages/{stage}.py", "--help"], timeout=60)
    assert result.returncode == 0 and not result.stderr.strip()
    for word in words:
        assert word in result.stdout, word
    assert ".venv" not in result.stdout and "results/report/" not in result.stdout
    if stage != "generate":  # the other stages list only what they read
        assert "model.size" not in result.stdout and "hydra/launcher" not in result.stdout


def test_help_follows_the_overrides_on_the_command_line():
    from conftest import run

    result = run(["python", "stages/generate.py", "model=sdxl_inpaint", "guidance=3", "--help"], timeout=60)
    assert "guidance=3.0" in result.stdout and "model.size=1024" in result.stdout
    assert "sdxl_inpaint *" in result.stdout
    result = run(["python", "stages/prepare.py", "mask.methd=box", "--help"], check=False, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("error: Could not override 'mask.methd'")


def test_help_shows_what_dvc_yaml_says_each_stage_reads():
    """cli.stage_keys reads dvc.yaml's params of each stage (no second list): each is a key of the composed config,
    so every stage's --help can show it."""
    from omegaconf import OmegaConf

    from inpaint_sweep.cli import stage_keys

    cfg = load_config()
    for name, stage in DVC["stages"].items():
        keys = stage_keys(name)
        assert keys == tuple("model" if key == "defaults" else key for key in stage["params"]), name
        for key in (k for k in keys if not k.startswith("hydra.")):  # hydra.*: generate's --help test shows them
            assert OmegaConf.select(cfg, key, default="absent") != "absent", f"{name} reads {key}, which is not set"


def _schema_defaults(cls, prefix=""):
    """(dotted key, default) of every leaf field of a schema dataclass, its sections (mask, model, ...) followed."""
    import dataclasses

    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default_factory):
            yield from _schema_defaults(f.default_factory, f"{prefix}{f.name}.")
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            yield prefix + f.name, default


def test_the_schema_holds_no_second_value_of_a_params_yaml_key():
    """params.yaml is the one source of every value outside model.*: a schema field there is MISSING (`???`), or at
    most equal to params.yaml's value. model.* is the exception: its defaults live in ModelConfig (params.yaml has no
    model section; the presets set what differs), and --help reads their comments there."""
    from omegaconf import MISSING

    from inpaint_sweep.config import Config

    assert "model" not in PARAMS
    for key, default in _schema_defaults(Config):
        if key.startswith("model."):
            continue
        node = PARAMS
        for part in key.split("."):
            assert part in node, f"the schema has {key}, which params.yaml does not set"
            node = node[part]
        assert default == MISSING or default == node, (
            f"schema default {key}={default!r} differs from params.yaml's {node!r}; make it MISSING")


def test_a_key_missing_from_params_yaml_is_an_error_not_a_schema_default(tmp_path):
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    from inpaint_sweep.config import Config

    schema = OmegaConf.structured(Config)
    params = OmegaConf.create({k: v for k, v in PARAMS.items() if k not in ("defaults", "hydra")})
    del params.mask["min_area"]
    merged = OmegaConf.merge(schema, params)
    with pytest.raises(MissingMandatoryValue):
        merged.mask.min_area


def test_model_presets_rely_on_the_schema_defaults_they_do_not_set():
    """A preset sets a few keys; the rest come from ModelConfig's defaults (which is why those exist)."""
    import dataclasses

    from inpaint_sweep.config import ModelConfig

    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    for preset in PRESETS:
        written = yaml.safe_load((REPO_ROOT / "conf" / "model" / f"{preset}.yaml").read_text())
        assert set(written) <= set(defaults), f"conf/model/{preset}.yaml sets keys the schema lacks"
        cfg = load_config([f"model={preset}"]).model
        for key in set(defaults) - set(written):
            assert cfg[key] == defaults[key], (preset, key)


def test_hand_kept_key_lists_name_real_keys():
    """The few lists of config keys kept in code (not derived) name fields the schema has; a renamed field fails."""
    import dataclasses

    from inpaint_sweep.config import MODEL_PER_CALL, Config, ModelConfig
    from inpaint_sweep.identity import FINGERPRINT_KEYS, NOT_IDENTITY

    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    assert set(MODEL_PER_CALL) <= model_fields and set(FINGERPRINT_KEYS) <= model_fields
    assert set(SWEEP_AXES) <= {f.name for f in dataclasses.fields(Config)}
    keys = {"model." + k for k in model_fields} | dict(_schema_defaults(Config)).keys()
    for key in NOT_IDENTITY:
        assert key in keys or any(k.startswith(key + ".") for k in keys), f"NOT_IDENTITY names {key}, not a key"


def test_identity_leaves_out_exactly_the_mask_keys_generate_does_not_read():
    """dvc.yaml says which mask.* keys generate reads: those must change a cell's id, and prepare's others must not
    (their result, the base mask file, is hashed instead)."""
    from inpaint_sweep.identity import NOT_IDENTITY

    generate = {k for k in DVC["stages"]["generate"]["params"] if k.startswith("mask.")}
    every = {f"mask.{k}" for k in PARAMS["mask"]}
    excluded = {k for k in every if k in NOT_IDENTITY or "mask" in NOT_IDENTITY}
    assert excluded == every - generate
