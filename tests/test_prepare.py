"""prepare: the manifest is validated with named errors, masks come from the box or YOLO, files land on disk."""

import json

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from inpaint_sweep.cases import check_box, load_cases, parse_box
from inpaint_sweep.config import REPO_ROOT, ConfigError
from inpaint_sweep.masks import box_mask, draw_overlay, load_yolo, pick_instance, prepare, yolo_mask

from conftest import run


def write_manifest(tmp_path, entries, photo=None):
    if photo is not None:
        photo.save(tmp_path / "photo.png")
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump(entries))
    return path


def test_manifest_loads_with_defaults(tmp_path, photo):
    path = write_manifest(tmp_path, [{"image": "photo.png", "box": [10, 20, 60, 70], "prompt": " a dragon "}], photo)
    (case,) = load_cases(path)
    assert case.id == "photo_0" and case.box == (10, 20, 60, 70) and case.prompt == "a dragon"
    assert case.size == (100, 80)


@pytest.mark.parametrize(
    "entry, words",
    [
        ({"image": "photo.png", "box": [10, 20, 120, 70], "prompt": "x"}, "box=[10, 20, 120, 70] lies outside the 100x80 image"),
        ({"image": "photo.png", "box": [10, 20, 10, 70], "prompt": "x"}, "box=[10, 20, 10, 70] has zero or negative area"),
        ({"image": "photo.png", "box": [-1, 0, 10, 10], "prompt": "x"}, "lies outside"),
        ({"image": "photo.png", "box": [1, 2, 3], "prompt": "x"}, "box must be [x1, y1, x2, y2], got box=[1, 2, 3]"),
        ({"image": "photo.png", "box": [1, 2, "a", 4], "prompt": "x"}, "four whole pixel numbers"),
        ({"image": "photo.png", "box": [1, 2, 30, 40], "prompt": "  "}, "prompt must be non-empty text"),
        ({"image": "nope.png", "box": [1, 2, 30, 40], "prompt": "x"}, "image not found: 'nope.png'"),
        ({"image": "photo.png", "box": [1, 2, 30, 40]}, "missing required key 'prompt'"),
        ({"image": "photo.png", "box": [1, 2, 30, 40], "prompt": "x", "colour": 1}, "unknown key(s) ['colour']"),
        ({"id": "a b", "image": "photo.png", "box": [1, 2, 30, 40], "prompt": "x"}, "id may hold only"),
    ],
)
def test_bad_case_is_named(tmp_path, photo, entry, words):
    path = write_manifest(tmp_path, [entry], photo)
    with pytest.raises(ConfigError) as e:
        load_cases(path)
    assert words in str(e.value)


def test_duplicate_ids_and_undecodable_images(tmp_path, photo):
    entry = {"id": "a", "image": "photo.png", "box": [1, 2, 30, 40], "prompt": "x"}
    with pytest.raises(ConfigError, match="duplicate id='a'"):
        load_cases(write_manifest(tmp_path, [entry, entry], photo))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ConfigError, match="'bad.jpg' does not decode as an image"):
        load_cases(write_manifest(tmp_path, [{**entry, "image": "bad.jpg"}]))


@given(st.lists(st.integers(-10_000, 10_000), min_size=4, max_size=4))
def test_parse_box_round_trips_lists_and_strings(values):
    assert parse_box(values, "case") == tuple(values)
    assert parse_box(",".join(map(str, values)), "case") == tuple(values)


@given(st.integers(0, 200), st.integers(0, 200), st.integers(0, 200), st.integers(0, 200))
def test_check_box_accepts_exactly_the_boxes_inside_with_area(x1, y1, x2, y2):
    inside = 0 <= x1 < x2 <= 150 and 0 <= y1 < y2 <= 120
    try:
        check_box((x1, y1, x2, y2), (150, 120), "case")
        accepted = True
    except ConfigError:
        accepted = False
    assert accepted == inside


def test_box_mask_covers_exactly_the_box():
    mask = box_mask((100, 80), (10, 20, 60, 70))
    assert mask.shape == (80, 100) and mask.sum() == 50 * 50
    assert mask[20, 10] and mask[69, 59] and not mask[70, 59] and not mask[19, 10]


def test_pick_instance_takes_best_iou_with_the_box():
    masks = np.zeros((3, 80, 100), bool)
    masks[0, 0:10, 0:10] = True  # far away
    masks[1, 20:70, 10:40] = True  # half the box
    masks[2, 22:68, 12:58] = True  # nearly the box
    assert pick_instance(masks, (10, 20, 60, 70))[0] == 2
    assert pick_instance(masks[:1], (50, 50, 60, 60)) == (-1, 0.0)


def test_overlay_tints_the_mask_and_keeps_the_rest(photo):
    mask = box_mask(photo.size, (40, 30, 90, 70))
    out = np.asarray(draw_overlay(photo, mask, (40, 30, 90, 70), "label", alpha=0.5)).astype(int)
    src = np.asarray(photo).astype(int)
    assert np.abs(out[45:65, 50:85] - src[45:65, 50:85]).mean() > 20  # tinted inside
    assert (out[75:, :30] == src[75:, :30]).all()  # untouched far from box and label


def test_prepare_writes_mask_overlay_record_and_table(tmp_path, photo):
    (case,) = load_cases(write_manifest(tmp_path, [{"id": "c1", "image": "photo.png", "box": [10, 20, 60, 70], "prompt": "x"}], photo))
    records = prepare([case], tmp_path / "out", "box", "unused.pt", 0.25, 0.45)
    mask = np.asarray(Image.open(tmp_path / "out" / "c1" / "mask.png"))
    assert mask.shape == (80, 100) and set(np.unique(mask)) == {0, 255}
    assert Image.open(tmp_path / "out" / "c1" / "overlay.png").size == (100, 80)
    record = json.loads((tmp_path / "out" / "c1" / "record.json").read_text())
    assert record["method"] == "box" and record["mask_area"] == 2500 and record["box"] == [10, 20, 60, 70]
    assert record["mask_bounds"] == [10, 20, 60, 70]
    assert json.loads((tmp_path / "out" / "cases.json").read_text()) == records


def test_yolo_segmentation_offline_with_a_model_built_from_yaml():
    """The real Ultralytics predict path with random weights (built from yolov8n-seg.yaml: nothing downloaded)."""
    model = load_yolo("yolov8n-seg.yaml")
    image = Image.open(REPO_ROOT / "data" / "images" / "bus.jpg").convert("RGB")
    box = (40, 390, 260, 910)
    # Random weights score everything low: at conf 0 it returns instances, and the best-IoU one is picked.
    mask, found = yolo_mask(model, image, box, 0.0, "bus")
    assert mask.shape == (1080, 810) and mask.any()
    assert found["instances_found"] > 0 and 0 < found["iou_with_box"] <= 1
    # At a normal threshold it finds nothing and says so, naming the case and the box.
    with pytest.raises(ConfigError, match=r"case 'bus': YOLO found no instance .*box=\[40, 390, 260, 910\]"):
        yolo_mask(model, image, box, 0.25, "bus")


def test_missing_yolo_weights_are_named_not_downloaded(tmp_path):
    with pytest.raises(ConfigError, match="YOLO weights not found locally: mask.weights='yolov8n-seg.pt'"):
        load_yolo("yolov8n-seg.pt")


def test_prepare_stage_reports_a_bad_box_in_one_line(tmp_path, photo):
    path = write_manifest(tmp_path, [{"id": "c1", "image": "photo.png", "box": [0, 0, 500, 10], "prompt": "x"}], photo)
    result = run(["python", "stages/prepare.py", f"cases={path}", f"paths.prepare={tmp_path}/out"], check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: case 'c1': box=[0, 0, 500, 10] lies outside the 100x80 image"
    assert not (tmp_path / "out").exists()
