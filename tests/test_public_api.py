"""Public API only: nothing under src/ or stages/ reaches into the private (underscore-named) parts of the libraries
the pipeline is built on. A private name changes without notice on any release; see STYLE.md ("Public API of the
libraries we build on, only").

The check reads each file's syntax tree (nothing is imported) and reports, as `file:line: expression`:
  (a) an import of a module path with an underscore-named component (`import hydra._internal.utils`,
      `from comet_ml._online import X`),
  (b) an underscore-named attribute read or called on one of their objects: a name bound by importing one of these
      libraries, in the scopes that see that import (`from hydra.core import utils` ... `utils._save_config(...)`,
      `comet_ml.config._x`, `getattr(comet_ml, "_x")`); what calling or indexing such a name returns
      (`comet_ml.API()._client`); a parameter or variable annotated with one of their types (`cfg: DictConfig` ...
      `cfg._get_node(...)`); a variable assigned or iterated from one of their objects. Calls that return the caller's
      own objects (`instantiate`, `call`, `to_object`) are not followed,
  (c) `from <library> import _name`,
  (d) a string that names a private module path of one of them (`_target_="hydra._internal.X"`,
      `importlib.import_module("dvc._x")`),
  (e) in a class whose bases all come from them, `self._x` that the class does not define itself (so it inherits
      it), and `super()._x`.
"Underscore-named" is a leading underscore and no trailing one: dunders (`__version__`) and Hydra's config keys
(`_target_`) are public. The project's own private names (`self._lock`) are never in question.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from inpaint_sweep.config import REPO_ROOT

LIBRARIES = ("hydra", "omegaconf", "comet_ml", "dvc", "diffusers", "ultralytics")
CHECKED = ("src", "stages")
PRIVATE_PATH = re.compile(rf"^(?:{'|'.join(LIBRARIES)})(?:\.\w+)+$")
ATTRIBUTE_BUILTINS = {"getattr", "hasattr", "setattr", "delattr"}


def is_private(name: str) -> bool:
    """One leading underscore: private. Dunders (`__version__`) and Hydra's `_key_` config keys (`_target_`) are not."""
    return name.startswith("_") and not name.endswith("_")


def library_of(module: str | None) -> str | None:
    top = (module or "").split(".")[0]
    return top if top in LIBRARIES else None


def private_path(module: str) -> bool:
    return library_of(module) is not None and any(is_private(part) for part in module.split("."))


# Library calls that return the caller's own objects, not the library's: what they return is not followed.
RETURNS_YOUR_OBJECTS = {"instantiate", "call", "to_object"}
COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
SCOPES = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, *COMPREHENSIONS)


class _Scope:
    """The names a module, function, class, lambda or comprehension binds, each with how it is bound."""

    def __init__(self, node: ast.AST, parent: _Scope | None) -> None:
        self.node, self.parent = node, parent
        self.bindings: dict[str, list[tuple[str, object]]] = {}
        for name, kind, payload in _bindings(node):
            self.bindings.setdefault(name, []).append((kind, payload))

    def owner(self, name: str) -> _Scope | None:
        """The scope whose binding of `name` a read here sees (Python's rules: the innermost scope that binds it; a
        class body is not seen from the scopes inside it)."""
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.bindings and (scope is self or not isinstance(scope.node, ast.ClassDef)):
                return scope
            scope = scope.parent
        return None

    def is_library(self, name: str, seen: frozenset = frozenset()) -> bool:
        """Whether `name`, read here, is a library: bound by importing one, or (every binding of it) a parameter or
        variable annotated with one of its types, or assigned or iterated from a library object."""
        scope = self.owner(name)
        if scope is None or (id(scope), name) in seen:
            return False
        seen |= {(id(scope), name)}
        kinds = scope.bindings[name]
        if any(kind == "library import" for kind, _ in kinds):
            return True
        return all(kind == "typed" and scope.is_library_type(payload, seen)
                   or kind == "value" and scope.is_library_object(payload, seen) for kind, payload in kinds)

    def is_library_object(self, node: ast.AST, seen: frozenset = frozenset()) -> bool:
        """Whether an expression is a library name, or an attribute, item or call result of one."""
        while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript, ast.Await)):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", None))
                if name in RETURNS_YOUR_OBJECTS:
                    return False
                node = node.func
            else:
                node = node.value
        return isinstance(node, ast.Name) and self.is_library(node.id, seen)

    def is_library_type(self, annotation: ast.AST | None, seen: frozenset = frozenset()) -> bool:
        """Whether an annotation names a library type: `DictConfig`, `omegaconf.DictConfig`, `Optional[...]` or
        `... | None` of one, or such a string."""
        if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
            try:
                annotation = ast.parse(annotation.value, mode="eval").body
            except SyntaxError:
                return False
        if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
            sides = [annotation.left, annotation.right]
            return any(self.is_library_type(side, seen) for side in sides) and any(
                isinstance(side, ast.Constant) and side.value is None for side in sides)
        if isinstance(annotation, ast.Subscript) and getattr(annotation.value, "id", None) == "Optional":
            return self.is_library_type(annotation.slice, seen)
        while isinstance(annotation, ast.Attribute):
            annotation = annotation.value
        return isinstance(annotation, ast.Name) and self.is_library(annotation.id, seen)


def _bindings(scope_node: ast.AST):
    """(name, kind, payload) for every name bound directly in a scope, not in the scopes nested in it. Kinds:
    "library import", "typed" (payload: the annotation), "value" (payload: the expression whose value it gets, or whose
    items it iterates), "other"."""
    if isinstance(scope_node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        a = scope_node.args
        for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
            if arg is not None:
                yield arg.arg, ("typed" if arg.annotation is not None else "other"), arg.annotation
    if isinstance(scope_node, COMPREHENSIONS):
        for generator in scope_node.generators:
            yield from _targets(generator.target, generator.iter)
        body = [part for g in scope_node.generators for part in g.ifs] + [g.iter for g in scope_node.generators[1:]]
        body += [getattr(scope_node, field) for field in ("elt", "key", "value") if hasattr(scope_node, field)]
    else:
        body = scope_node.body if isinstance(scope_node.body, list) else [scope_node.body]
    stack = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name, "other", None
            stack.extend(node.decorator_list)
            if isinstance(node, ast.ClassDef):
                stack.extend([*node.bases, *node.keywords])
            else:
                stack.extend(d for d in [*node.args.defaults, *node.args.kw_defaults] if d is not None)
            continue
        if isinstance(node, SCOPES):
            if isinstance(node, COMPREHENSIONS):
                stack.append(node.generators[0].iter)  # evaluated in the enclosing scope
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.asname or alias.name.split(".")[0]
                yield name, ("library import" if library_of(alias.name) else "other"), None
        elif isinstance(node, ast.ImportFrom):
            library = node.level == 0 and library_of(node.module)
            for alias in node.names:
                if alias.name != "*":
                    yield alias.asname or alias.name, ("library import" if library else "other"), None
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                yield from _targets(target, node.value, iterated=False)
            stack.append(node.value)
            continue
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            yield node.target.id, "typed", node.annotation
            stack.extend(n for n in (node.value, node.annotation) if n is not None)
            continue
        elif isinstance(node, ast.NamedExpr):
            yield node.target.id, "value", node.value
            stack.append(node.value)
            continue
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            yield from _targets(node.target, node.iter)
            stack.extend([node.iter, *node.body, *node.orelse])
            continue
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                if item.optional_vars is not None:
                    yield from _targets(item.optional_vars, item.context_expr, iterated=False)
                stack.append(item.context_expr)
            stack.extend(node.body)
            continue
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            yield node.id, "other", None  # augmented assignment, del, and the rest
        elif isinstance(node, ast.ExceptHandler) and node.name:
            yield node.name, "other", None
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            yield node.name, "other", None
        stack.extend(ast.iter_child_nodes(node))


def _targets(target: ast.AST, value: ast.AST, iterated: bool = True):
    """A plain name gets the value (an iterated one: an item of it, still the library's object); a name unpacked
    from it is "other"; an attribute or item set (`cfg.x = ...`) binds no name."""
    if isinstance(target, ast.Name):
        yield target.id, "value", value
    elif isinstance(target, (ast.Tuple, ast.List, ast.Starred)):
        for node in ast.walk(target):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                yield node.id, "other", None


class _Checker(ast.NodeVisitor):
    def __init__(self, path: str) -> None:
        self.path = path
        self.found: list[str] = []
        self.scope: _Scope | None = None

    def report(self, node: ast.AST, what: str) -> None:
        text = ast.unparse(node)
        text = text if len(text) <= 100 else text[:97] + "..."
        self.found.append(f"{self.path}:{node.lineno}: {text}  ({what})")

    def _enter(self, node: ast.AST) -> None:
        outer, self.scope = self.scope, _Scope(node, self.scope)
        self.generic_visit(node)
        self.scope = outer

    visit_Module = visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _enter
    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _enter

    # (a), (c): imports

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if private_path(alias.name):
                self.report(node, "private module")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or not library_of(node.module):
            return
        if private_path(node.module):
            self.report(node, "private module")
        elif any(is_private(alias.name) for alias in node.names):
            self.report(node, "private name")

    # (b): attributes

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if is_private(node.attr) and self.scope.is_library_object(node.value):
            self.report(node, "private attribute")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func, args = node.func, node.args
        if (isinstance(func, ast.Name) and func.id in ATTRIBUTE_BUILTINS and len(args) >= 2
                and isinstance(args[1], ast.Constant) and isinstance(args[1].value, str)
                and is_private(args[1].value) and self.scope.is_library_object(args[0])):
            self.report(node, "private attribute")
        self.generic_visit(node)

    # (e): a subclass of a library class reaching into what it inherits

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if node.bases and all(self.scope.is_library_object(base) for base in node.bases):
            methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
            own = set(_Scope(node, None).bindings)  # methods and class attributes it defines
            for method in methods:
                me = method.args.posonlyargs[:1] or method.args.args[:1]
                for n in ast.walk(method):
                    if (me and isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
                            and isinstance(n.value, ast.Name) and n.value.id == me[0].arg):
                        own.add(n.attr)
            for method in methods:
                me = method.args.posonlyargs[:1] or method.args.args[:1]
                for n in ast.walk(method):
                    if not (isinstance(n, ast.Attribute) and is_private(n.attr)):
                        continue
                    inherited = me and isinstance(n.value, ast.Name) and n.value.id == me[0].arg and n.attr not in own
                    parents = isinstance(n.value, ast.Call) and getattr(n.value.func, "id", None) == "super"
                    if inherited or parents:
                        self.report(n, "private attribute of a library base class")
        self._enter(node)

    # (d): dotted paths in strings

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and PRIVATE_PATH.match(node.value) and private_path(node.value):
            self.report(node, "private module path")


def check_source(source: str, path: str = "<snippet>") -> list[str]:
    """Every use of a private part of the libraries in one file's source, as `path:line: expression  (why)`."""
    checker = _Checker(path)
    checker.visit(ast.parse(source, filename=path))
    return checker.found


def checked_files(root: Path = REPO_ROOT) -> list[Path]:
    return sorted(p for folder in CHECKED for p in (root / folder).rglob("*.py") if ".egg-info" not in str(p))


def test_nothing_under_src_or_stages_uses_private_parts_of_the_libraries():
    found = [line for path in checked_files()
             for line in check_source(path.read_text(), str(path.relative_to(REPO_ROOT)))]
    assert not found, "private API of " + ", ".join(LIBRARIES) + " used:\n" + "\n".join(found)


def test_the_check_reads_every_source_file():
    files = {str(p.relative_to(REPO_ROOT)) for p in checked_files()}
    assert {"src/inpaint_sweep/tracking.py", "src/inpaint_sweep/exp_queue.py", "stages/generate.py"} <= files


# -- the checker itself ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source, expression", [
    # (a) private module paths
    ("import hydra._internal.utils", "import hydra._internal.utils"),
    ("import comet_ml._online as online", "import comet_ml._online as online"),
    ("from hydra._internal.utils import run_and_report", "from hydra._internal.utils import run_and_report"),
    ("from dvc.repo.experiments.queue._celery import X", "from dvc.repo.experiments.queue._celery import X"),
    # (c) private names
    ("from comet_ml import _private", "from comet_ml import _private"),
    ("from omegaconf.basecontainer import _x, y", "from omegaconf.basecontainer import _x, y"),
    # (b) attributes on names bound by imports
    ("from hydra.core import utils\nutils._save_config(cfg, 'c.yaml', out)", "utils._save_config"),
    ("import comet_ml as c\nc.config._helper()", "c.config._helper"),
    ("import dvc.repo\ndvc.repo.Repo._reset", "dvc.repo.Repo._reset"),
    ("from dvc.repo import Repo as R\nR('.')._lock_depth", "R('.')._lock_depth"),
    ("import comet_ml\nx = comet_ml.API()._client", "comet_ml.API()._client"),
    ("from diffusers import UNet2DConditionModel\nUNet2DConditionModel._from_config",
     "UNet2DConditionModel._from_config"),
    ("import ultralytics\ngetattr(ultralytics, '_x')", "getattr(ultralytics, '_x')"),
    ("def f():\n    import comet_ml\n    return comet_ml.config._x", "comet_ml.config._x"),
    ("import comet_ml\ndef f():\n    return comet_ml._y", "comet_ml._y"),
    ("import comet_ml\nclass A:\n    def f(self):\n        return comet_ml._y", "comet_ml._y"),
    ("import comet_ml\nrows = [comet_ml._z(r) for r in range(3)]", "comet_ml._z"),
    ("from hydra.core.utils import JobReturn\nJobReturn()._return_value", "JobReturn()._return_value"),
    ("from omegaconf import DictConfig\ndef f(cfg: DictConfig):\n    return cfg._get_node('a')", "cfg._get_node"),
    ("from omegaconf import DictConfig\ndef f(cfg: 'DictConfig | None'):\n    return cfg._get_node('a')",
     "cfg._get_node"),
    ("import omegaconf\ndef f(cfg):\n    node = omegaconf.OmegaConf.create()\n    node._set_parent(cfg)",
     "node._set_parent"),
    ("from dvc.repo import Repo\nwith Repo('.') as repo:\n    repo._reset()", "repo._reset"),
    # (e) inherited private parts
    ("from hydra.core.plugins import Plugin\nclass P(Plugin):\n    def f(self):\n        return self._hidden()",
     "self._hidden"),
    ("from hydra.core.plugins import Plugin\nclass P(Plugin):\n    def _f(self):\n        return super()._f()",
     "super()._f"),
    # (d) private module paths in strings
    ("cfg = {'_target_': 'hydra._internal.core_plugins.basic_launcher.BasicLauncher'}",
     "'hydra._internal.core_plugins.basic_launcher.BasicLauncher'"),
    ("import importlib\nm = importlib.import_module('omegaconf._utils')", "'omegaconf._utils'"),
])
def test_the_check_flags_private_use(source, expression):
    found = check_source(source)
    assert len(found) == 1 and f"<snippet>:" in found[0] and f": {expression}  (" in found[0], found


@pytest.mark.parametrize("source", [
    "import hydra\nfrom hydra.core.utils import run_job\nhydra.main(config_path=None)",
    "from omegaconf import OmegaConf\nOmegaConf.to_container(cfg, resolve=True)",
    "import comet_ml\ncomet_ml.__version__; comet_ml.API().get_account_details()",
    ("class Logger:\n    def __init__(self):\n        self._lock = None\n"
     "    def _read(self):\n        return self._lock"),
    "from hydra.core import utils\ndef f(utils):\n    return utils._private",  # a parameter, not the import
    "import comet_ml\ndef f():\n    comet_ml = object()\n    return comet_ml._x",  # a local, not the import
    "dvc = make()\ndvc._x",  # never imported
    "from hydra_plugins.grid import GridSweeper\nGridSweeper._sweep",  # the project's own package
    "from . import tracking\ntracking._quiet('comet_ml')",  # the project's own module
    "import json\njson._default_decoder",  # not one of the libraries
    "try:\n    import comet_ml\nexcept ImportError:\n    pass\nx = ['comet_ml', 'dvc.api', 'hydra.core.utils']",
    "print('see hydra._internal: not used here')",  # prose, not a module path
    "from hydra.utils import instantiate\nmodel = instantiate(cfg.model)\nmodel._forward()",  # the project's object
    "import comet_ml\ndef f(cfg):\n    cfg = load(cfg)\n    cfg.x = comet_ml.API()\n    return cfg._y",  # cfg's own
    "from omegaconf import DictConfig\ndef f(cfg: DictConfig):\n    return cfg.model._target_",  # a public key
    ("from hydra.core.plugins import Plugin\nclass P(Plugin):\n    def __init__(self):\n        self._n = 0\n"
     "    def _step(self):\n        self._n += 1\n        return self._step"),  # its own private parts
])
def test_the_check_passes_clean_code(source):
    assert check_source(source) == []


def test_the_check_names_file_and_line():
    found = check_source("import os\n\nfrom hydra.core import utils\nutils._save_config(1, 2, 3)\n", "stages/x.py")
    assert found == ["stages/x.py:4: utils._save_config  (private attribute)"]
