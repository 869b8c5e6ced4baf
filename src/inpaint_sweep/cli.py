"""Stage entry points report an error as one line and an exit code: 2 for a bad input (ConfigError, and Hydra's and
OmegaConf's config errors), 1 for a runtime condition (RunError: a held view lock, missing prepare outputs, a full
disk). HYDRA_FULL_ERROR=1 shows the traceback instead."""

from __future__ import annotations

import functools
import os
import sys

from .errors import ConfigError, RunError, no_space

EXIT_BAD_INPUT = 2  # change the input
EXIT_RUN_FAILED = 1  # the input is fine; the run could not finish here and now


def _config_exceptions() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return ConfigError, HydraException, OmegaConfBaseException


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def disk_full(error: OSError) -> RunError:
    """A full disk (or quota) as a RunError naming the file that could not be written."""
    where = f" writing {error.filename!r}" if error.filename else ""
    return RunError(f"no space left on the device{where} ({error.strerror or error}); free some space and run again")


def one_line_errors(func):
    """Turn ConfigError (and Hydra/OmegaConf config errors) into `error: <sentence>` and exit code 2, RunError and a
    full disk into `error: <sentence>` and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        full = os.environ.get("HYDRA_FULL_ERROR") == "1"
        try:
            return func(*args, **kwargs)
        except _config_exceptions() as e:
            if full:
                raise
            fail(" ".join(str(e).split()), EXIT_BAD_INPUT)
        except RunError as e:
            if full:
                raise
            fail(" ".join(str(e).split()), EXIT_RUN_FAILED)
        except OSError as e:
            if full or not no_space(e):
                raise
            fail(" ".join(str(disk_full(e)).split()), EXIT_RUN_FAILED)

    return wrapper


# --help -----------------------------------------------------------------------------------------------------------------
# Every stage's --help shows the keys it reads, with their current values (after the overrides on the command line)
# and the comment written next to each key where it is defined (params.yaml; model.* in config.ModelConfig). The
# comments are read from those files, so help can never drift from them.

HELP_FLAGS = ("--help", "-h")


@functools.lru_cache(maxsize=None)
def stage_keys(stage: str) -> tuple[str, ...]:
    """The config keys a stage reads: dvc.yaml's `params` of the stage (`defaults`, the defaults list that picks the
    model preset, shown as `model`: the preset's values)."""
    import yaml

    from .config import REPO_ROOT

    if stage == "review":  # the review app is not a DVC stage (people answer in it): what it reads
        return ("review", "paths.generate", "paths.ratings")
    stage_params = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"][stage]["params"]
    return tuple("model" if key == "defaults" else key for key in stage_params)


def help_requested(argv: list[str]) -> bool:
    return any(a in HELP_FLAGS for a in argv)


def _trailing_comment(text: str) -> str:
    """The `# comment` at the end of a YAML or Python line (a '#' inside quotes is not one)."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[i + 1 :].strip()
    return ""


def key_comments(yaml_text: str) -> dict[str, tuple[list[str], str]]:
    """dotted key -> (the comment lines right above it, its end-of-line comment and continuation lines)."""
    import re

    comments, stack, above, last = {}, [], [], None
    for line in yaml_text.splitlines():
        stripped, indent = line.strip(), len(line) - len(line.lstrip())
        if not stripped:
            above, last = [], None
        elif stripped.startswith("#"):
            if last and indent > last[1] + 2:  # an end-of-line comment continued on the next line
                comments[last[0]][1].append(stripped[1:].strip())
            else:
                above.append(stripped[1:].strip())
        elif m := re.match(r"([A-Za-z_][\w.]*)\s*:(.*)$", stripped):
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, m.group(1)))
            dotted = ".".join(k for _, k in stack)
            end = _trailing_comment(m.group(2))
            comments[dotted] = (above, [end] if end else [])
            above, last = [], (dotted, indent)
        else:  # a list item (the defaults list): not a key
            above, last = [], None
    return {k: (a, " ".join(e)) for k, (a, e) in comments.items()}


def _model_comments() -> dict[str, tuple[list[str], str]]:
    """model.* comments from the schema (config.ModelConfig: `name: type = default  # comment`)."""
    import inspect
    import re

    from .config import ModelConfig

    comments = {}
    for line in inspect.getsource(ModelConfig).splitlines():
        if m := re.match(r"\s{4}(\w+):[^=]*=(.*)$", line):
            comments[f"model.{m.group(1)}"] = ([], _trailing_comment(m.group(2)))
    return comments


def _scalar(value) -> str:
    """A value as it would be written in params.yaml (a string only quoted when YAML would misread it)."""
    import json

    import yaml

    if isinstance(value, str):
        try:
            plain = value != "" and yaml.safe_load(value) == value
        except yaml.YAMLError:
            plain = False
        return value if plain else json.dumps(value)
    return yaml.safe_dump(value, default_flow_style=True, width=1000).split("\n")[0]


def _subtree(cfg, keys) -> dict:
    """The keys (dotted) of the composed config, nested again: paths.prepare -> {paths: {prepare: ...}}."""
    from omegaconf import OmegaConf

    tree: dict = {}
    for dotted in keys:
        *parents, leaf = dotted.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        value = OmegaConf.select(cfg, dotted)
        node[leaf] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return tree


def _flatten(tree: dict, comments: dict, prefix: str = "") -> list[tuple[str, str]]:
    """(text, comment) rows: each leaf as the override that sets it (`mask.method=box`), each section's own comment
    and the comment lines above a key as rows of their own."""
    rows = []
    for key, value in tree.items():
        dotted = prefix + key
        above, end = comments.get(dotted, ([], ""))
        rows += [(f"# {c}", "") for c in above]
        if isinstance(value, dict) and value:
            if end:
                rows.append((f"# {dotted}.*: {end}", ""))
            rows += _flatten(value, comments, dotted + ".")
        else:
            rows.append((f"{dotted}={_scalar(value)}", end))
    return rows


def _render(rows: list[tuple[str, str]], indent: str = "  ", widest: int = 38) -> list[str]:
    column = min(widest, max(len(text) for text, end in rows if end) + 2)
    return [indent + (f"{text.ljust(column - 1)} # {end}" if end else text) for text, end in rows]


def _first_comment(path, width: int = 90) -> str:
    """A config file's first comment line (what the option is), shortened to `width` characters at a word."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            text = line.lstrip("# ").strip()
            return text if len(text) <= width else text[: text.rfind(" ", 0, width - 3)] + " ..."
    return ""


def _plugin(group: str, option: str) -> str:
    from hydra.core.config_store import ConfigStore

    try:
        provider = ConfigStore.instance().load(f"{group}/{option}.yaml").provider
    except Exception:  # noqa: BLE001 - only a description
        provider = None
    return "Hydra's built-in" if provider == "hydra" else f"installed Hydra plugin ({provider or 'unknown'})"


def _groups(cfg) -> list[str]:
    """generate's config groups: every option Hydra finds (conf/ and installed plugins), the current one marked *."""
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from .config import CONFIG_DIR

    loader = GlobalHydra.instance().config_loader()
    choices = OmegaConf.select(cfg, "hydra.runtime.choices") or {}
    lines = ["Config groups (group=option; * = the current choice):"]
    for group, note in (("model", "a model preset: conf/model/<option>.yaml"),
                        ("hydra/launcher", "where the jobs of a multirun (-m) run"),
                        ("hydra/sweeper", "what expands the grid of a multirun")):
        options = loader.get_group_options(group)
        current = choices.get(group)
        lines.append(f"  {group}: {note}")
        for option in options:
            path = CONFIG_DIR / group / f"{option}.yaml"
            about = _first_comment(path) if path.is_file() else _plugin(group, option)
            lines.append(f"    {(option + (' *' if option == current else '')).ljust(18)} {about}")
    return lines


def stage_help(stage: str, cfg) -> str:
    """The --help text of a stage: what it does and how to call it, then the keys it reads with their comments."""
    import ast

    from .config import PARAMS_FILE, REPO_ROOT

    doc = ast.get_docstring(ast.parse((REPO_ROOT / "stages" / f"{stage}.py").read_text())) or stage
    comments = {**key_comments(PARAMS_FILE.read_text()), **_model_comments(),
                "model": ([], "the preset's values: model=<preset> picks one, model.<key>=... sets a key")}
    lines = [doc.strip(), "", "Keys it reads: current value (params.yaml, then this command line's key=value overrides)",
             "and the comment written where the key is defined. Set any of them as shown: key=value", ""]
    lines += _render(_flatten(_subtree(cfg, stage_keys(stage)), comments))
    if stage == "generate":
        lines += [""] + _groups(cfg)
        lines += ["", "Hydra's own flags (--cfg job, --info, --multirun, ...): python stages/generate.py --hydra-help"]
    lines += ["", "Every key and its comment: params.yaml. The whole pipeline: dvc repro (README)."]
    return "\n".join(lines)


def print_help(stage: str, argv: list[str]) -> None:
    """--help of a stage that is not a Hydra app (prepare, report, review): the config composed with the other
    arguments."""
    from .config import load_config

    overrides = [a for a in argv if a not in HELP_FLAGS]
    one_line_errors(lambda: print(stage_help(stage, load_config(overrides))))()


def _hydra_help(stage: str, *, _root_) -> str:
    """Resolver behind conf/hydra/help/stage.yaml: generate's --help, through Hydra's own help (which composes the
    config with the command line's overrides). `$` is doubled because Hydra fills its template with string.Template."""
    return stage_help(stage, _root_).replace("$", "$$")


def _register_resolver() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("stage_help"):
        OmegaConf.register_new_resolver("stage_help", _hydra_help)


_register_resolver()
