"""The case manifest: which photo, which box, which prompt.

One case = one image, one box, one prompt. Several boxes on one image are several cases (each its own mask, overlay,
record and generated images), never one case with a union mask. Ids are stable: written in the manifest, or derived
from the image name and the box, so adding, removing or reordering other cases never renames a case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import yaml

from .config import ConfigError
from .images import load_photo

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Case:
    id: str
    image: Path  # resolved path
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels, x2/y2 exclusive
    prompt: str
    size: tuple[int, int]  # width, height of the photo as a viewer shows it (upright: EXIF orientation applied)


def parse_box(value, where: str) -> tuple[int, int, int, int]:
    """Parse `[x1, y1, x2, y2]` (a list or a "x1,y1,x2,y2" string) into four ints."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ConfigError(f"{where}: box must be [x1, y1, x2, y2], got box={value!r}")
    try:
        box = tuple(int(v) for v in value if float(v) == int(float(v)))
    except (TypeError, ValueError):
        box = ()
    if len(box) != 4:
        raise ConfigError(f"{where}: box must hold four whole pixel numbers, got box={value!r}")
    return box


def check_box(box: tuple[int, int, int, int], size: tuple[int, int], where: str) -> None:
    x1, y1, x2, y2 = box
    width, height = size
    if x2 <= x1 or y2 <= y1:
        raise ConfigError(f"{where}: box={list(box)} has zero or negative area (need x1 < x2 and y1 < y2)")
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise ConfigError(f"{where}: box={list(box)} lies outside the {width}x{height} image")


def default_case_id(image: Path, box: tuple[int, int, int, int]) -> str:
    """`<image stem>_<x1>_<y1>_<x2>_<y2>`: depends only on the case itself, not on its place in the manifest."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", image.stem).lstrip("_.-") or "image"
    return f"{stem}_" + "_".join(str(v) for v in box)


def load_cases(manifest: str | Path) -> list[Case]:
    """Read and validate the manifest; image paths are relative to the manifest's folder.

    Each photo is decoded here (images.load_photo: upright, 8-bit RGB), so an undecodable one stops the stage before
    any case is written, and a box is checked against the photo as a viewer shows it.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ConfigError(f"cases manifest not found: cases={str(manifest)!r}")
    try:
        entries = yaml.safe_load(manifest.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"cases manifest {str(manifest)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"cases manifest {str(manifest)!r} must be a non-empty list of cases")

    cases: list[Case] = []
    for i, entry in enumerate(entries):
        where = f"case #{i + 1}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} in {manifest}: expected a mapping with image, box, prompt; got {entry!r}")
        unknown = set(entry) - {"id", "image", "box", "prompt"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: id, image, box, prompt")
        for key in ("image", "box", "prompt"):
            if key not in entry:
                raise ConfigError(f"{where}: missing required key {key!r}")
        image = (manifest.parent / str(entry["image"])).resolve()
        if entry.get("id"):
            where = f"case {str(entry['id'])!r}"
        box = parse_box(entry["box"], where)
        case_id = str(entry.get("id") or default_case_id(image, box))
        where = f"case {case_id!r}"
        if not _ID_RE.match(case_id):
            raise ConfigError(f"{where}: id may hold only letters, digits, '_', '-', '.', got id={case_id!r}")
        if any(c.id == case_id for c in cases):
            raise ConfigError(f"{where}: duplicate id={case_id!r}; ids must be unique (give each case its own id)")
        prompt = entry["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"{where}: prompt must be non-empty text, got prompt={prompt!r}")
        if not image.is_file():
            raise ConfigError(f"{where}: image not found: {entry['image']!r} (looked at {image})")
        size = load_photo(image, where, shown=str(entry["image"])).size  # decoded in full, upright, as prepare reads it
        check_box(box, size, where)
        cases.append(Case(id=case_id, image=image, box=box, prompt=prompt.strip(), size=size))
    return cases


class Prompts(NamedTuple):
    prompt: str
    negative_prompt: str
    replacement: str | None  # the prompt_sr value the cell uses; None without search/replace


def prompt_variants(case_id: str, case_prompt: str, prompt: str | None, negative_prompt: str,
                    prompt_sr) -> list[Prompts]:
    """The prompts of one case's cells in a combination: its `prompt` (null: the case's own) and negative prompt;
    with `prompt_sr` [find, a, b, ...] (A1111's Prompt S/R), one cell per value, each replacing `find` in both."""
    text = case_prompt if prompt is None else prompt
    if not prompt_sr:
        return [Prompts(text, negative_prompt, None)]
    find = prompt_sr[0]
    if find not in text:
        raise ConfigError(f"case {case_id}: prompt_sr looks for {find!r}, which its prompt {text!r} does not contain")
    return [Prompts(text.replace(find, v), negative_prompt.replace(find, v), v) for v in prompt_sr]
