"""prepare: turn each case's box into a mask, clean it, draw it, and record how it was made.

Methods: `box` and `ellipse` are geometric (the user's box is the region, taken as drawn); `yolo` (instance
segmentation) and `sam` (SAM / SAM 2 / MobileSAM prompted with the box) are Ultralytics models whose instance mask with
the best IoU against the box is used, then cleaned (fill holes, drop specks, optionally clip to the box).
mask.png is this base mask (0/255). Generate grows it (mask.dilate), cuts it to the box (mask.clip_to_box) and feathers
a compositing copy (mask.feather) per cell, with dilate, clip_to_box and feather_mask below.

The settings are mask.* keys: the functions take them as required keyword arguments, so their values come from
params.yaml only (through stages/prepare.py), never from a default here.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .cases import Case
from .config import ConfigError
from .images import _atomic, font, load_photo, save_image, to_mask_image, write_json

GEOMETRIC = ("box", "ellipse")
MODELS = ("yolo", "sam")
# Columns of cases.csv, one row per case; `id` is the case id, the `case` column of the report's runs.csv.
TABLE_COLUMNS = (
    "id", "image", "source_image", "width", "height", "x1", "y1", "x2", "y2", "prompt", "method", "method_requested", "method_reason",
    "class", "class_id", "confidence", "instance_iou", "instances_found", "iou_with_box", "mask_area",
    "mask_fraction", "mask_x1", "mask_y1", "mask_x2", "mask_y2", "mask", "soft_mask", "overlay",
)  # fmt: skip


# 1. Geometric masks and scores ----------------------------------------------------------------------------------------


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """Boolean mask (height, width) that is True inside the box."""
    width, height = size
    x1, y1, x2, y2 = box
    mask = np.zeros((height, width), dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


def ellipse_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """The ellipse inscribed in the box: pixels whose centre lies inside it (never a pixel outside the box)."""
    width, height = size
    x1, y1, x2, y2 = box
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    ys, xs = np.ogrid[y1:y2, x1:x2]
    inside = ((xs + 0.5 - cx) / rx) ** 2 + ((ys + 0.5 - cy) / ry) ** 2 <= 1.0
    mask = np.zeros((height, width), dtype=bool)
    mask[y1:y2, x1:x2] = inside
    return mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def box_ious(masks: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """IoU of each mask (N, H, W) with the box, without building N full-size unions."""
    x1, y1, x2, y2 = box
    if len(masks) == 0:
        return np.zeros(0)
    inter = masks[:, y1:y2, x1:x2].sum(axis=(1, 2), dtype=np.int64)
    union = masks.sum(axis=(1, 2), dtype=np.int64) + (x2 - x1) * (y2 - y1) - inter
    return inter / np.maximum(union, 1)


def pick_instance(
    masks: np.ndarray,
    box: tuple[int, int, int, int],
    classes: np.ndarray | None = None,
    allowed: frozenset[int] | None = None,
) -> tuple[int, float]:
    """Index of the instance (N, H, W) with the best IoU against the box among the allowed classes, and that IoU.

    (-1, 0.0) when no allowed instance overlaps the box. `allowed=None` keeps every class.
    """
    scores = box_ious(masks, box)
    if allowed is not None and classes is not None:
        scores = np.where(np.isin(np.asarray(classes, dtype=int), list(allowed)), scores, 0.0)
    if not len(scores) or scores.max() <= 0:
        return -1, 0.0
    best = int(np.argmax(scores))
    return best, float(scores[best])


# 2. Clean-up (model masks only; geometric masks are the box as drawn) -------------------------------------------------


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill every background region the mask encloses (background not connected to the image border)."""
    import cv2

    count, labels = cv2.connectedComponents((~mask).astype(np.uint8), connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return mask | ((labels > 0) & ~np.isin(labels, border))


def drop_specks(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Remove separate pieces (8-connected) smaller than min_area pixels; the largest piece always stays."""
    import cv2

    if min_area <= 0 or not mask.any():
        return mask
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = (areas >= min_area) | (areas == areas.max())
    return np.isin(labels, np.flatnonzero(keep) + 1)


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow the mask by exactly `pixels`: every pixel whose centre is within that Euclidean distance of the mask."""
    import cv2

    if pixels <= 0 or not mask.any():
        return mask
    # distanceTransform gives, for each non-zero pixel, the exact (DIST_MASK_PRECISE) distance to the nearest zero.
    distance = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return mask | (distance <= pixels)


def clip_to_box(mask: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    return mask & box_mask((mask.shape[1], mask.shape[0]), box)


def clean_mask(
    mask: np.ndarray, box: tuple[int, int, int, int], dilate_px: int, holes: bool, min_area: int, clip: bool
) -> np.ndarray:
    """Fill holes, drop specks, dilate, then (optionally) clip to the box: the order a margin needs."""
    if holes:
        mask = fill_holes(mask)
    mask = drop_specks(mask, min_area)
    mask = dilate(mask, dilate_px)
    return clip_to_box(mask, box) if clip else mask


def feather_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Soft mask (uint8) for compositing: 0 outside the hard mask, rising to 255 at `pixels` inside its edge.

    It never reaches outside the hard mask, so a composite stays the original photo wherever mask.png is 0.
    The photo's own border is not an edge (nothing to blend with there).
    """
    import cv2

    if pixels <= 0:
        return mask.astype(np.uint8) * 255
    padded = np.pad(mask, 1, mode="edge").astype(np.uint8)  # edge padding: the photo border is no edge
    depth = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    return np.round(np.clip(depth / pixels, 0.0, 1.0) * 255).astype(np.uint8)


# 3. Ultralytics models --------------------------------------------------------------------------------------------


@dataclass
class Instances:
    """What a model found in one photo: masks (N, H, W) bool at photo size, confidences, class ids and names."""

    masks: np.ndarray
    confidences: np.ndarray
    classes: np.ndarray | None  # None: the model has no classes (SAM)
    names: dict


def instances_from_result(result, has_classes: bool = True) -> Instances:
    """Read an Ultralytics Results (retina_masks=True, so masks are already at photo size)."""
    height, width = result.orig_shape
    if result.masks is None or len(result.masks) == 0:
        empty = np.zeros((0, height, width), dtype=bool)
        return Instances(empty, np.zeros(0), np.zeros(0, dtype=int) if has_classes else None, dict(result.names))
    masks = result.masks.data.cpu().numpy() > 0.5
    confidences = result.boxes.conf.cpu().numpy().astype(float)
    classes = result.boxes.cls.cpu().numpy().astype(int) if has_classes else None
    return Instances(masks, confidences, classes, dict(result.names))


def load_yolo(weights: str):
    """Load an Ultralytics segmentation model from a local .pt, or build one from a model YAML (random weights).

    A YAML model's random weights come from seed 0, so it finds the same instances on every run.
    """
    import torch
    from ultralytics import YOLO

    from_yaml = weights.endswith((".yaml", ".yml"))
    if not from_yaml and not Path(weights).is_file():
        raise ConfigError(
            f"YOLO weights not found locally: mask.weights={weights!r}; nothing is downloaded, "
            "so put a *-seg.pt file there or pass its path"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = YOLO(weights, task="segment")
    if model.task != "segment":
        raise ConfigError(f"mask.weights={weights!r} is a {model.task} model; yolo masks need a *-seg model")
    return model


def sam_weight_names() -> tuple[str, ...]:
    """File names Ultralytics knows how to build a SAM from (it picks the architecture by the name's ending)."""
    from ultralytics.models.sam.build import sam_model_map

    return tuple(sam_model_map)


def load_sam(weights: str):
    """Load Ultralytics SAM / SAM 2 / MobileSAM from a local file; nothing is downloaded."""
    names = sam_weight_names()
    if not Path(weights).is_file():
        raise ConfigError(
            f"SAM weights not found locally: mask.sam_weights={weights!r}; nothing is downloaded, "
            f"so put a SAM file there ({', '.join(names)}) or pass its path"
        )
    if not str(weights).endswith(names):
        raise ConfigError(
            f"mask.sam_weights={weights!r}: the file name must end with one of {', '.join(names)} "
            "(Ultralytics picks the SAM architecture by it)"
        )
    from ultralytics import SAM

    return SAM(str(weights))


def resolve_classes(wanted, names: dict) -> frozenset[int] | None:
    """mask.classes (names or ids, as text) -> class ids of this model; None (every class) when empty."""
    wanted = [str(w).strip() for w in wanted or []]
    if not wanted:
        return None
    by_name = {str(n).lower(): int(i) for i, n in names.items()}
    ids = set()
    for w in wanted:
        if w.isdigit() and int(w) in names:
            ids.add(int(w))
        elif w.lower() in by_name:
            ids.add(by_name[w.lower()])
        else:
            known = ", ".join(str(n) for n in list(names.values())[:12]) + (", ..." if len(names) > 12 else "")
            raise ConfigError(f"mask.classes: this model has no class {w!r} (it knows {known})")
    return frozenset(ids)


def bgr(image: Image.Image) -> np.ndarray:
    """Ultralytics reads numpy images as OpenCV does: BGR."""
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


def yolo_instances(model, image: Image.Image, *, conf: float, max_det: int) -> Instances:
    """The (at most max_det) instances YOLO finds at or above `conf`, masks at the photo's full resolution."""
    result = model.predict(bgr(image), retina_masks=True, conf=conf, max_det=max_det, verbose=False)[0]
    return instances_from_result(result, has_classes=True)


def sam_instances(model, image: Image.Image, box: tuple[int, int, int, int], *, conf: float) -> Instances:
    """SAM's mask for the box prompt (confidence = its predicted mask quality), at the photo's full resolution."""
    result = model.predict(bgr(image), bboxes=[list(box)], conf=conf, verbose=False)[0]
    return instances_from_result(result, has_classes=False)


# 4. One case: method -> mask and a record of how it was made ----------------------------------------------------------


def _miss_reason(method: str, found: Instances, conf: float, allowed: frozenset[int] | None) -> str:
    if not len(found.masks):
        return f"{method} found no instance with confidence >= {conf:g}"
    if allowed is not None and found.classes is not None and not np.isin(found.classes, list(allowed)).any():
        wanted = sorted(str(found.names.get(i, i)) for i in allowed)
        return f"{method} found {len(found.masks)} instance(s), none of class {', '.join(wanted)}"
    return f"{method} found {len(found.masks)} instance(s), none overlapping the box"


def select_mask(
    found: Instances,
    box: tuple[int, int, int, int],
    method: str,
    conf: float,
    allowed: frozenset[int] | None,
    on_miss: str,
    case_id: str,
) -> tuple[np.ndarray | None, dict]:
    """The found instance that fits the box best, or what on_miss says to do when none does.

    Returns (raw mask or None for "use the box", facts for the record).
    """
    best, best_iou = pick_instance(found.masks, box, found.classes, allowed)
    facts = {"instances_found": int(len(found.masks))}
    if best < 0:
        reason = _miss_reason(method, found, conf, allowed)
        if on_miss == "error":
            raise ConfigError(
                f"case {case_id!r}: {reason} for box={list(box)} (mask.on_miss=box falls back to the box)"
            )
        return None, {**facts, "method": "box", "method_reason": f"{reason}; mask.on_miss=box"}
    cls = int(found.classes[best]) if found.classes is not None else None
    return found.masks[best], {
        **facts,
        "method": method,
        "method_reason": f"best IoU with the box of {len(found.masks)} instance(s)",
        "class": str(found.names.get(cls, cls)) if cls is not None else None,
        "class_id": cls,
        "confidence": round(float(found.confidences[best]), 4),
        "instance_iou": round(best_iou, 4),
    }


def make_mask(
    case: Case,
    image: Image.Image,
    method: str,
    model,
    *,
    conf: float,
    max_det: int,
    allowed: frozenset[int] | None,
    on_miss: str,
    holes: bool,
    min_area: int,
    clip: bool,
) -> tuple[np.ndarray, dict]:
    """The base mask (bool H x W) for one case and the facts of how it was made (method really used, and why).

    `model` is the loaded YOLO or SAM (None for box and ellipse); `allowed` the class ids mask.classes resolved to
    (None: every class). Clean-up (holes, min_area, clip) applies to a model's mask only; nothing is dilated here."""
    facts = {
        "method": method, "method_requested": method, "method_reason": "requested", "class": None, "class_id": None,
        "confidence": None, "instance_iou": None, "instances_found": None, "cleaned": False,
    }  # fmt: skip
    if method == "box":
        return box_mask(case.size, case.box), facts
    if method == "ellipse":
        return ellipse_mask(case.size, case.box), facts
    if method == "yolo":
        found = yolo_instances(model, image, conf=conf, max_det=max_det)
    elif method == "sam":
        found = sam_instances(model, image, case.box, conf=conf)
    else:
        raise ConfigError(f"unknown mask.method={method!r}")
    raw, picked = select_mask(found, case.box, method, conf, allowed, on_miss, case.id)
    facts.update(picked)
    if raw is None:
        return box_mask(case.size, case.box), facts
    facts["cleaned"] = True
    return clean_mask(raw, case.box, 0, holes, min_area, clip), facts  # dilated per cell, by generate


# 5. Pictures ----------------------------------------------------------------------------------------------------------


def overlay_label(case_id: str, facts: dict) -> str:
    """`case | method | class confidence`, and what was asked for when a fallback happened."""
    method = facts["method"]
    if method != facts["method_requested"]:
        method += f" ({facts['method_requested']} missed)"
    parts = [case_id, method]
    if facts.get("confidence") is not None:
        parts.append(f"{facts['class'] or 'object'} {facts['confidence']:.2f}")
    return " | ".join(parts)


def draw_overlay(image: Image.Image, mask: np.ndarray, box, label: str, *, alpha: float) -> Image.Image:
    """The photo with the mask tinted over it, the box outlined and a label in the corner."""
    tint = Image.new("RGB", image.size, (255, 40, 200))
    alpha_mask = Image.fromarray((mask * int(255 * alpha)).astype(np.uint8))
    out = image.copy()
    out.paste(tint, mask=alpha_mask)
    draw = ImageDraw.Draw(out)
    width = max(2, image.width // 300)
    draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=(255, 230, 0), width=width)
    f = font(max(14, image.width // 40))
    x0, y0, x1, y1 = draw.textbbox((8, 8), label, font=f)
    draw.rectangle([x0 - 4, y0 - 4, x1 + 4, y1 + 4], fill=(0, 0, 0))
    draw.text((8, 8), label, fill=(255, 255, 255), font=f)
    return out


def contact_sheet(tiles: list[tuple[str, Image.Image]], tile: int = 256, columns: int | None = None) -> Image.Image:
    """All overlays on one white sheet, each fitted into a tile x tile square, its label (case id) right under it."""
    columns = columns or math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    f = font(max(12, tile // 16))
    label_h, pad = f.size + 10, 8
    sheet = Image.new("RGB", (pad + columns * (tile + pad), pad + rows * (tile + label_h + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (label, image) in enumerate(tiles):
        x, y = pad + (k % columns) * (tile + pad), pad + (k // columns) * (tile + label_h + pad)
        thumb = image.convert("RGB")
        thumb.thumbnail((tile, tile), Image.Resampling.LANCZOS)
        sheet.paste(thumb, (x + (tile - thumb.width) // 2, y + tile - thumb.height))  # bottom: right above its label
        while draw.textlength(label, font=f) > tile and len(label) > 4:  # a long id is shortened, never overlapping
            label = label[:-4] + "..."
        draw.text((x, y + tile + 4), label, fill="black", font=f)
    return sheet


# 6. The stage's work --------------------------------------------------------------------------------------------------


def _table_row(record: dict) -> dict:
    x1, y1, x2, y2 = record["box"]
    mx1, my1, mx2, my2 = record["mask_bounds"]
    width, height = record["image_size"]
    row = {**record, "width": width, "height": height, "x1": x1, "y1": y1, "x2": x2, "y2": y2}
    row.update(mask_x1=mx1, mask_y1=my1, mask_x2=mx2, mask_y2=my2)
    return {k: ("" if row.get(k) is None else row[k]) for k in TABLE_COLUMNS}


def write_table(records: list[dict], path: str | Path) -> None:
    """cases.csv: one row per case, flat columns (box and bounds split), for the report to join on `id`."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=TABLE_COLUMNS)
    writer.writeheader()
    writer.writerows(_table_row(r) for r in records)
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text.getvalue(), newline=""))


def prepare(
    cases: list[Case],
    out_dir: str | Path,
    *,
    method: str,
    weights: str,
    sam_weights: str,
    conf: float,
    max_det: int,
    classes,
    on_miss: str,
    clip: bool,
    holes: bool,
    min_area: int,
    overlay_alpha: float,
) -> list[dict]:
    """Per case image.png (the photo upright, 8-bit RGB), mask.png (the base mask), overlay.png, record.json; then
    cases.json, cases.csv, contact_sheet.png. The arguments are mask.* (clip: clip_to_box, holes: fill_holes)."""
    out_dir = Path(out_dir)
    # 1. Load the model once (a missing weights file or an unknown class stops here, before any case).
    model, allowed = None, None
    if method == "yolo":
        model = load_yolo(weights)
        allowed = resolve_classes(classes, model.names)
    elif method == "sam":
        model = load_sam(sam_weights)
    records, tiles = [], []
    for case in cases:
        # 2. Make the base mask, 3. write the files and the record.
        # The photo as a viewer shows it (upright, 8-bit RGB); load_cases already warned about transparency.
        image = load_photo(case.image, f"case {case.id!r}", shown=os.path.relpath(case.image), warn=False)
        mask, facts = make_mask(case, image, method, model, conf=conf, max_det=max_det, allowed=allowed,
                                on_miss=on_miss, holes=holes, min_area=min_area, clip=clip)
        case_dir = out_dir / case.id
        save_image(image, case_dir / "image.png", compress_level=1)  # what generate reads: upright, so is its output
        save_image(to_mask_image(mask), case_dir / "mask.png")
        overlay = draw_overlay(image, mask, case.box, overlay_label(case.id, facts), alpha=overlay_alpha)
        save_image(overlay, case_dir / "overlay.png")
        ys, xs = np.nonzero(mask)
        record = {
            "id": case.id,
            "image": str(case_dir / "image.png"),  # the photo generate reads: upright 8-bit RGB, as a viewer shows it
            "source_image": os.path.relpath(case.image),  # the file the manifest names
            "image_size": list(case.size),
            "box": list(case.box),
            "prompt": case.prompt,
            **facts,
            "iou_with_box": round(iou(mask, box_mask(case.size, case.box)), 4),
            "mask_area": int(mask.sum()),
            "mask_fraction": round(float(mask.mean()), 6),
            "mask_bounds": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
            "mask": str(case_dir / "mask.png"),
            "soft_mask": None,  # each cell feathers its own (mask.feather is generate's)
            "overlay": str(case_dir / "overlay.png"),
        }
        write_json(record, case_dir / "record.json")
        records.append(record)
        tiles.append((f"{case.id} ({facts['method']})", overlay))
    # 4. The tables and the contact sheet of all cases.
    write_json(records, out_dir / "cases.json")
    write_table(records, out_dir / "cases.csv")
    save_image(contact_sheet(tiles), out_dir / "contact_sheet.png")
    return records
