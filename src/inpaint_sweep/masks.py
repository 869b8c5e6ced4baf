"""prepare: turn a case's box into a mask (plain box, or the YOLO instance that fits the box best) and draw it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .cases import Case
from .config import ConfigError
from .images import font


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """Boolean mask (height, width) that is True inside the box."""
    width, height = size
    x1, y1, x2, y2 = box
    mask = np.zeros((height, width), dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def pick_instance(masks: np.ndarray, box: tuple[int, int, int, int]) -> tuple[int, float]:
    """Index of the instance mask (N, H, W) with the best IoU against the box, and that IoU (-1, 0.0 if none overlaps)."""
    target = box_mask((masks.shape[2], masks.shape[1]), box)
    scores = [iou(m, target) for m in masks]
    if not scores or max(scores) <= 0:
        return -1, 0.0
    best = int(np.argmax(scores))
    return best, scores[best]


def load_yolo(weights: str):
    """Load an Ultralytics segmentation model from a local .pt, or build one from a model YAML (random weights)."""
    from ultralytics import YOLO

    if not weights.endswith((".yaml", ".yml")) and not Path(weights).is_file():
        raise ConfigError(
            f"YOLO weights not found locally: mask.weights={weights!r}; nothing is downloaded, "
            "so put a *-seg.pt file there or pass its path"
        )
    return YOLO(weights, task="segment")


def yolo_mask(model, image: Image.Image, box: tuple[int, int, int, int], conf: float, case_id: str):
    """The full-resolution mask of the detected instance that overlaps the box best, with its class and confidence."""
    result = model.predict(np.asarray(image)[:, :, ::-1], retina_masks=True, conf=conf, verbose=False)[0]
    if result.masks is None or len(result.masks) == 0:
        raise ConfigError(f"case {case_id!r}: YOLO found no instance (conf >= {conf}) for box={list(box)}")
    masks = result.masks.data.cpu().numpy() > 0.5
    best, best_iou = pick_instance(masks, box)
    if best < 0:
        raise ConfigError(f"case {case_id!r}: no YOLO instance overlaps box={list(box)}")
    cls = int(result.boxes.cls[best])
    return masks[best], {
        "class": result.names.get(cls, str(cls)),
        "confidence": round(float(result.boxes.conf[best]), 4),
        "iou_with_box": round(best_iou, 4),
        "instances_found": int(len(masks)),
    }


def make_mask(case: Case, method: str, image: Image.Image, yolo_model=None, conf: float = 0.25):
    """Mask (bool H x W) and a record of how it was made, for one case."""
    if method == "box":
        return box_mask(case.size, case.box), {}
    if method == "yolo":
        return yolo_mask(yolo_model, image, case.box, conf, case.id)
    raise ConfigError(f"unknown mask.method={method!r}")


def draw_overlay(image: Image.Image, mask: np.ndarray, box, label: str, alpha: float = 0.45) -> Image.Image:
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


def prepare(cases: list[Case], out_dir: str | Path, method: str, weights: str, conf: float, overlay_alpha: float):
    """Write mask.png, overlay.png and record.json per case, and cases.json for the later stages. Returns the records."""
    from .images import save_image, to_mask_image, write_json

    out_dir = Path(out_dir)
    yolo_model = load_yolo(weights) if method == "yolo" else None
    records = []
    for case in cases:
        # 1. Load the photo, 2. make the mask, 3. write the mask, overlay and record.
        image = Image.open(case.image).convert("RGB")
        mask, found = make_mask(case, method, image, yolo_model, conf)
        case_dir = out_dir / case.id
        save_image(to_mask_image(mask), case_dir / "mask.png")
        label = f"{case.id} | {method}" + (f" | {found['class']} {found['confidence']:.2f}" if found else "")
        save_image(draw_overlay(image, mask, case.box, label, overlay_alpha), case_dir / "overlay.png")
        ys, xs = np.nonzero(mask)
        record = {
            "id": case.id,
            "image": os.path.relpath(case.image),
            "image_size": list(case.size),
            "box": list(case.box),
            "prompt": case.prompt,
            "method": method,
            "mask": str(case_dir / "mask.png"),
            "overlay": str(case_dir / "overlay.png"),
            "mask_area": int(mask.sum()),
            "mask_fraction": round(float(mask.mean()), 6),
            "mask_bounds": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
            **found,
        }
        write_json(record, case_dir / "record.json")
        records.append(record)
    write_json(records, out_dir / "cases.json")
    return records
