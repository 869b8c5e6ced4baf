"""prepare: the manifest is validated with named errors; masks come from the box, an ellipse, YOLO or SAM, are picked
by IoU with the box and cleaned by exact pixel amounts; each case gets its files, the run a contact sheet and a table.
"""

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from inpaint_sweep.cases import Case, check_box, load_cases, parse_box
from inpaint_sweep.config import REPO_ROOT, ConfigError, check_config, load_config
from inpaint_sweep.masks import (
    Instances,
    box_mask,
    clean_mask,
    contact_sheet,
    dilate,
    draw_overlay,
    drop_specks,
    ellipse_mask,
    feather_mask,
    fill_holes,
    load_sam,
    load_yolo,
    make_mask,
    overlay_label,
    pick_instance,
    prepare,
    resolve_classes,
    sam_instances,
    select_mask,
    yolo_instances,
)

from conftest import prepare_settings, run


def mask_settings(**overrides) -> dict:
    """make_mask's keyword arguments as params.yaml sets them (every class allowed), with `overrides`."""
    s = prepare_settings()
    return {**dict(conf=s["conf"], max_det=s["max_det"], allowed=None, on_miss=s["on_miss"], holes=s["holes"],
                   min_area=s["min_area"], clip=s["clip"]), **overrides}

BUS = REPO_ROOT / "data" / "images" / "bus.jpg"
BUS_BOX = (40, 390, 260, 910)


def test_manifest_loads_with_defaults(tmp_path, manifest, photo):
    path = manifest(tmp_path, [{"image": "photo.png", "box": [10, 20, 60, 70], "prompt": " a dragon "}], photo)
    (case,) = load_cases(path)
    assert case.id == "photo_10_20_60_70" and case.box == (10, 20, 60, 70) and case.prompt == "a dragon"
    assert case.size == (100, 80)


def test_default_ids_are_stable_when_cases_are_added_or_reordered(tmp_path, manifest, photo):
    a = {"image": "photo.png", "box": [10, 20, 60, 70], "prompt": "x"}
    b = {"image": "photo.png", "box": [0, 0, 30, 30], "prompt": "y"}  # a second box on the same image: a second case
    first = [c.id for c in load_cases(manifest(tmp_path, [a], photo))]
    later = [c.id for c in load_cases(manifest(tmp_path, [b, a]))]
    assert first == ["photo_10_20_60_70"] and later == ["photo_0_0_30_30", "photo_10_20_60_70"]
    with pytest.raises(ConfigError, match="duplicate id='photo_10_20_60_70'.*give each case its own id"):
        load_cases(manifest(tmp_path, [a, {**a, "prompt": "another prompt, same box"}]))


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
def test_bad_case_is_named(tmp_path, manifest, photo, entry, words):
    path = manifest(tmp_path, [entry], photo)
    with pytest.raises(ConfigError) as e:
        load_cases(path)
    assert words in str(e.value)


def test_duplicate_ids_and_undecodable_images(tmp_path, manifest, photo):
    entry = {"id": "a", "image": "photo.png", "box": [1, 2, 30, 40], "prompt": "x"}
    with pytest.raises(ConfigError, match="duplicate id='a'"):
        load_cases(manifest(tmp_path, [entry, entry], photo))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ConfigError, match="'bad.jpg' does not decode as an image"):
        load_cases(manifest(tmp_path, [{**entry, "image": "bad.jpg"}]))


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


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 60), st.integers(0, 50), st.integers(1, 60), st.integers(1, 50))
def test_ellipse_and_box_masks_stay_inside_their_boxes(x1, y1, w, h):
    size, box = (130, 110), (x1, y1, x1 + w, y1 + h)
    inside = box_mask(size, box)
    for mask in (box_mask(size, box), ellipse_mask(size, box)):
        assert mask.any() and not (mask & ~inside).any()
    ellipse = ellipse_mask(size, box)
    # Inscribed: symmetric about both axes of the box, and touching the box's middle row or column.
    crop = ellipse[y1 : y1 + h, x1 : x1 + w]
    assert (crop == crop[::-1, :]).all() and (crop == crop[:, ::-1]).all()
    assert crop[h // 2].all() or crop[:, w // 2].all()


def test_ellipse_covers_pi_over_four_of_a_large_box():
    mask = ellipse_mask((400, 300), (0, 0, 400, 300))
    assert abs(mask.sum() / (400 * 300) - np.pi / 4) < 0.005
    assert not mask[0, 0] and not mask[-1, -1] and mask[150, 0] and mask[0, 200]


def test_pick_instance_takes_best_iou_with_the_box():
    masks = np.zeros((3, 80, 100), bool)
    masks[0, 0:10, 0:10] = True  # far away
    masks[1, 20:70, 10:40] = True  # half the box
    masks[2, 22:68, 12:58] = True  # nearly the box
    index, score = pick_instance(masks, (10, 20, 60, 70))
    assert index == 2 and score == pytest.approx((46 * 46) / (50 * 50))
    assert pick_instance(masks[:1], (50, 50, 60, 60)) == (-1, 0.0)
    assert pick_instance(np.zeros((0, 80, 100), bool), (50, 50, 60, 60)) == (-1, 0.0)


def test_class_filter_picks_the_best_instance_of_an_allowed_class():
    masks = np.zeros((3, 80, 100), bool)
    masks[0, 20:70, 10:60] = True  # the box exactly, but class 2
    masks[1, 30:60, 20:50] = True  # a smaller overlap, class 0
    masks[2, 25:65, 15:55] = True  # a bigger overlap, class 5
    classes = np.array([2, 0, 5])
    box = (10, 20, 60, 70)
    assert pick_instance(masks, box, classes, None)[0] == 0
    assert pick_instance(masks, box, classes, frozenset({0}))[0] == 1
    assert pick_instance(masks, box, classes, frozenset({0, 5}))[0] == 2
    assert pick_instance(masks, box, classes, frozenset({7})) == (-1, 0.0)


def test_resolve_classes_takes_names_and_ids_and_names_an_unknown_one():
    names = {0: "person", 1: "bicycle", 2: "car"}
    assert resolve_classes([], names) is None
    assert resolve_classes(["person", "2"], names) == frozenset({0, 2})
    assert resolve_classes(["Car"], names) == frozenset({2})
    with pytest.raises(ConfigError, match="mask.classes: this model has no class 'dragon' .*person, bicycle, car"):
        resolve_classes(["person", "dragon"], names)


def _instances(classes=(0, 1)) -> Instances:
    masks = np.zeros((len(classes), 80, 100), bool)
    for i in range(len(classes)):
        masks[i, 20 + i : 70, 10 : 60 - i] = True
    return Instances(masks, np.array([0.9, 0.8][: len(classes)]), np.array(classes), {0: "person", 1: "dog"})


def test_on_miss_error_names_the_case_the_box_and_why():
    box = (10, 20, 60, 70)
    empty = Instances(np.zeros((0, 80, 100), bool), np.zeros(0), np.zeros(0, int), {0: "person"})
    with pytest.raises(ConfigError) as e:
        select_mask(empty, box, "yolo", 0.25, None, "error", "c1")
    assert str(e.value) == (
        "case 'c1': yolo found no instance with confidence >= 0.25 for box=[10, 20, 60, 70] "
        "(mask.on_miss=box falls back to the box)"
    )
    with pytest.raises(ConfigError, match="found 2 instance\\(s\\), none of class person"):
        select_mask(_instances(classes=(1, 1)), box, "yolo", 0.25, frozenset({0}), "error", "c1")
    far = (80, 0, 100, 10)
    with pytest.raises(ConfigError, match="none overlapping the box for box=\\[80, 0, 100, 10\\]"):
        select_mask(_instances(), far, "yolo", 0.25, None, "error", "c1")


def test_on_miss_box_falls_back_and_the_record_says_so(photo):
    case = Case("c1", BUS, (10, 20, 60, 70), "x", (100, 80))
    raw, facts = select_mask(_instances(classes=(1, 1)), case.box, "yolo", 0.25, frozenset({0}), "box", "c1")
    assert raw is None and facts["method"] == "box"
    assert facts["method_reason"] == "yolo found 2 instance(s), none of class person; mask.on_miss=box"
    assert overlay_label("c1", {**facts, "method_requested": "yolo"}) == "c1 | box (yolo missed)"
    picked, facts = select_mask(_instances(), case.box, "yolo", 0.25, frozenset({1}), "box", "c1")
    assert facts["method"] == "yolo" and facts["class"] == "dog" and facts["class_id"] == 1
    assert facts["confidence"] == 0.8 and (picked == _instances().masks[1]).all()
    assert overlay_label("c1", {**facts, "method_requested": "yolo"}) == "c1 | yolo | dog 0.80"


def test_dilation_grows_the_mask_by_exactly_n_pixels():
    dot = np.zeros((21, 21), bool)
    dot[10, 10] = True
    # The pixels within Euclidean distance 3 of a point: 29 of them (x^2 + y^2 <= 9).
    assert dilate(dot, 3).sum() == 29
    assert dilate(dot, 1).sum() == 5 and (dilate(dot, 0) == dot).all()
    rect = box_mask((100, 80), (30, 20, 60, 50))
    for n in (1, 4, 7):
        ys, xs = np.nonzero(dilate(rect, n))
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (30 - n, 20 - n, 60 + n, 50 + n)
        # Straight edges move out by exactly n; the corners round off (no pixel farther than n from the box).
        assert dilate(rect, n)[35, 30 - n] and not dilate(rect, n)[35, 30 - n - 1]
        assert not dilate(rect, n)[20 - n, 30 - n]


def test_fill_holes_fills_enclosed_background_only():
    ring = box_mask((60, 40), (10, 10, 40, 30)) & ~box_mask((60, 40), (15, 15, 35, 25))
    assert (fill_holes(ring) == box_mask((60, 40), (10, 10, 40, 30))).all()
    notch = box_mask((60, 40), (0, 10, 40, 30)) & ~box_mask((60, 40), (0, 15, 20, 25))  # open to the border
    assert (fill_holes(notch) == notch).all()


def test_drop_specks_removes_small_pieces_but_never_the_largest():
    mask = box_mask((100, 80), (10, 10, 30, 30))  # 400 px
    mask[50:53, 70:73] = True  # 9 px speck
    mask[60:68, 80:88] = True  # 64 px: exactly the minimum, kept
    cleaned = drop_specks(mask, 64)
    assert cleaned.sum() == 400 + 64 and not cleaned[51, 71]
    only_small = box_mask((100, 80), (0, 0, 5, 5)) | box_mask((100, 80), (50, 50, 53, 53))
    assert drop_specks(only_small, 1000).sum() == 25  # everything under min_area: the largest piece stays


def test_clean_mask_order_and_clip_to_box():
    raw = box_mask((100, 80), (20, 20, 50, 50))
    raw[30:35, 30:35] = False  # a hole
    raw[70, 90] = True  # a speck
    box = (20, 20, 55, 50)
    cleaned = clean_mask(raw, box, dilate_px=3, holes=True, min_area=4, clip=False)
    assert cleaned[32, 32] and not cleaned[70, 90]
    assert cleaned.sum() == dilate(box_mask((100, 80), (20, 20, 50, 50)), 3).sum()
    clipped = clean_mask(raw, box, dilate_px=3, holes=True, min_area=4, clip=True)
    assert not (clipped & ~box_mask((100, 80), box)).any()
    ys, xs = np.nonzero(clipped)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (20, 20, 53, 50)  # grown right by 3, cut elsewhere


def test_feather_stays_inside_the_hard_mask_and_ramps_over_n_pixels():
    hard = box_mask((100, 80), (20, 20, 80, 60))
    soft = feather_mask(hard, 6)
    assert soft.dtype == np.uint8 and (soft[~hard] == 0).all()
    # Distance from the edge, 1 px (the edge pixel) .. 6 px, then fully opaque.
    assert [int(soft[40, 20 + k]) for k in range(8)] == [round(255 * d / 6) for d in (1, 2, 3, 4, 5, 6, 6, 6)]
    assert soft[40, 50] == 255
    edge = box_mask((100, 80), (0, 0, 50, 80))  # touching the photo border: no fade there
    assert feather_mask(edge, 6)[40, 0] == 255
    assert (feather_mask(hard, 0) == hard * 255).all()


def test_geometric_masks_ignore_clean_up_and_stay_in_the_box(photo):
    case = Case("c1", BUS, (10, 20, 60, 70), "x", (100, 80))
    for method in ("box", "ellipse"):
        mask, facts = make_mask(case, photo, method, None, **mask_settings(holes=True, min_area=64, clip=False))
        assert not (mask & ~box_mask((100, 80), case.box)).any()
        assert facts["method"] == facts["method_requested"] == method and facts["cleaned"] is False


def test_overlay_tints_the_mask_and_keeps_the_rest(photo):
    mask = box_mask(photo.size, (40, 30, 90, 70))
    out = np.asarray(draw_overlay(photo, mask, (40, 30, 90, 70), "label", alpha=0.5)).astype(int)
    src = np.asarray(photo).astype(int)
    assert np.abs(out[45:65, 50:85] - src[45:65, 50:85]).mean() > 20  # tinted inside
    assert (out[75:, :30] == src[75:, :30]).all()  # untouched far from box and label


def test_contact_sheet_labels_every_tile(photo):
    tiles = [(f"case_{i}", photo) for i in range(3)]
    sheet = np.asarray(contact_sheet(tiles, tile=128))
    # 3 tiles -> 2 columns, 2 rows; each tile is 128 px + a label strip; pad 8.
    label_h = (sheet.shape[0] - 8) // 2 - 128 - 8
    strips = [sheet[8 + r * (128 + label_h + 8) + 128 : 8 + r * (128 + label_h + 8) + 128 + label_h,
                    8 + c * 136 : 8 + c * 136 + 128] for r, c in ((0, 0), (0, 1), (1, 0), (1, 1))]  # fmt: skip
    inked = [(s < 100).any(axis=2).sum() for s in strips]
    assert all(n > 20 for n in inked[:3]) and inked[3] == 0  # three labels, the empty fourth place blank
    assert not (strips[0] == strips[1]).all()  # different ids, different ink


def test_prepare_writes_files_per_case_a_table_and_a_contact_sheet(tmp_path, manifest, photo):
    entries = [
        {"id": "c1", "image": "photo.png", "box": [10, 20, 60, 70], "prompt": "x"},
        {"image": "photo.png", "box": [50, 5, 95, 40], "prompt": "y"},
    ]
    cases = load_cases(manifest(tmp_path, entries, photo))
    records = prepare(cases, tmp_path / "out", **prepare_settings(method="ellipse"))
    for record, case in zip(records, cases):
        folder = tmp_path / "out" / case.id
        mask = np.asarray(Image.open(folder / "mask.png"))
        assert mask.shape == (80, 100) and set(np.unique(mask)) == {0, 255}
        assert not mask[~box_mask((100, 80), case.box)].any()
        assert Image.open(folder / "overlay.png").size == (100, 80)
        assert json.loads((folder / "record.json").read_text()) == record
        assert record["mask"] == str(folder / "mask.png")
        # The base mask only: each cell of generate dilates and feathers its own copy (mask.dilate, mask.feather).
        assert record["soft_mask"] is None and not (folder / "soft_mask.png").exists()
        assert record["method"] == "ellipse" and record["mask_area"] == int((mask > 0).sum())
        assert 0.7 < record["iou_with_box"] < 0.85 and record["class"] is None
    assert records[1]["id"] == "photo_50_5_95_40"
    assert json.loads((tmp_path / "out" / "cases.json").read_text()) == records
    rows = list(csv.DictReader(open(tmp_path / "out" / "cases.csv")))
    assert [r["id"] for r in rows] == ["c1", "photo_50_5_95_40"]
    assert rows[0]["x1"] == "10" and rows[0]["y2"] == "70" and rows[0]["mask_area"] == str(records[0]["mask_area"])
    assert Image.open(tmp_path / "out" / "contact_sheet.png").size[0] > 2 * 256
    records = prepare(cases[:1], tmp_path / "hard", **prepare_settings(method="box"))
    assert records[0]["mask_bounds"] == [10, 20, 60, 70] and records[0]["mask_area"] == 2500


@pytest.mark.parametrize(
    "override, words",
    [
        ("mask.method=lasso", "unknown mask.method='lasso'; choose one of box, ellipse, yolo, sam"),
        ("mask.on_miss=skip", "unknown mask.on_miss='skip'; choose one of error, box"),
        ("mask.dilate=-2", "mask.dilate must be >= 0 pixels, got mask.dilate=-2"),
        ("mask.min_area=-1", "mask.min_area must be >= 0 pixels"),
        ("mask.feather=-3", "mask.feather must be >= 0 pixels"),
        ("mask.conf=1.5", "mask.conf must be in [0, 1], got mask.conf=1.5"),
        ("mask.max_det=0", "mask.max_det must be >= 1"),
        ("mask.classes=[person]", None),
    ],
)
def test_bad_mask_settings_are_named(override, words):
    overrides = [override] + (["mask.method=sam"] if words is None else [])
    with pytest.raises(ConfigError) as e:
        check_config(load_config(overrides))
    assert (words or "mask.classes filters YOLO classes and SAM has none") in str(e.value)


@pytest.fixture(scope="module")
def yolo_yaml():
    return load_yolo("yolov8n-seg.yaml")


def test_yolo_segmentation_offline_with_a_model_built_from_yaml(yolo_yaml):
    """The real Ultralytics predict path with random weights (built from yolov8n-seg.yaml: nothing downloaded)."""
    image = Image.open(BUS).convert("RGB")
    # Random weights score everything low: at conf 0 it returns instances, full size (retina masks).
    found = yolo_instances(yolo_yaml, image, conf=0.0, max_det=20)
    assert found.masks.shape[1:] == (1080, 810) and 0 < len(found.masks) <= 20
    assert found.classes is not None and set(found.classes) <= set(yolo_yaml.names)
    # The same seeded build finds the same instances.
    again = yolo_instances(load_yolo("yolov8n-seg.yaml"), image, conf=0.0, max_det=20)
    assert (again.masks == found.masks).all()
    # The class filter and the pick work on what the model really found.
    best, _ = pick_instance(found.masks, BUS_BOX, found.classes, None)
    allowed = resolve_classes([str(found.classes[best])], yolo_yaml.names)
    raw, facts = select_mask(found, BUS_BOX, "yolo", 0.0, allowed, "error", "bus")
    assert facts["class_id"] == int(found.classes[best]) and facts["instances_found"] == len(found.masks)
    assert 0 < facts["instance_iou"] <= 1 and (raw == found.masks[best]).all()
    # At a normal threshold it finds nothing and says so, naming the case and the box.
    case = Case("bus", BUS, BUS_BOX, "x", (810, 1080))
    with pytest.raises(ConfigError, match=r"case 'bus': yolo found no instance .*box=\[40, 390, 260, 910\]"):
        make_mask(case, image, "yolo", yolo_yaml, **mask_settings(conf=0.25, max_det=20, on_miss="error"))


def test_prepare_stage_many_cases_with_yolo_offline(tmp_path, prepare_stage, capsys):
    """The stage itself on the many-cases manifest: YAML-built YOLO, every file per case, what it found printed."""
    out = tmp_path / "out"
    overrides = ["cases=data/cases_many.yaml", f"paths.prepare={out}", "mask.method=yolo",
                 "mask.weights=yolov8n-seg.yaml", "mask.conf=0.0", "mask.max_det=20"]  # fmt: skip
    records = prepare_stage(overrides)
    cases = yaml.safe_load((REPO_ROOT / "data" / "cases_many.yaml").read_text())
    assert len(records) == len(cases) >= 3 and len({r["source_image"] for r in records}) == 2
    printed = capsys.readouterr().out.splitlines()
    for r in records:
        for name in ("image.png", "mask.png", "overlay.png", "record.json"):
            assert (out / r["id"] / name).is_file()
        assert not (out / r["id"] / "soft_mask.png").exists()  # mask.feather is generate's
        assert r["method"] == "yolo" and r["instances_found"] > 0 and r["class"] is not None
        # What it found, one line per case: the record's numbers as the user reads them.
        found = f"  {r['id']}: yolo {r['class']} {r['confidence']:.2f}, IoU with box {r['iou_with_box']:.2f}, "
        assert found + f"{r['mask_area']} px" in printed
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width > 2 * 256 and sheet.height > 2 * 256
    assert [row["id"] for row in csv.DictReader(open(out / "cases.csv"))] == [r["id"] for r in records]
    # At conf 0.25 the random model finds nothing: on_miss=box falls back per case, and each record says why.
    records = prepare_stage(overrides[:4] + ["mask.max_det=20", "mask.on_miss=box", "cases=data/cases.yaml"])
    assert records[0]["method"] == "box" and records[0]["method_requested"] == "yolo"
    assert records[0]["method_reason"] == "yolo found no instance with confidence >= 0.25; mask.on_miss=box"
    assert records[0]["iou_with_box"] == 1.0
    assert f"  bus_person: box, IoU with box 1.00, {records[0]['mask_area']} px ({records[0]['method_reason']})" \
        in capsys.readouterr().out.splitlines()


@pytest.fixture(scope="module")
def mobile_sam_file(tmp_path_factory):
    """A real MobileSAM checkpoint file with seeded random weights, built in code (nothing downloaded)."""
    from ultralytics.models.sam.build import build_mobile_sam

    path = tmp_path_factory.mktemp("sam") / "mobile_sam.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(build_mobile_sam().state_dict(), path)
    return path


def test_sam_is_prompted_with_the_box_and_its_mask_is_cleaned(mobile_sam_file, monkeypatch):
    """Everything real up to Ultralytics' SAM predict call; only that call is replaced, and here is why.

    No SAM weights exist offline, so whatever the call returns would be noise: the random-weight model's mask-quality
    scores are below any threshold (it returns no mask at all), and one call takes ~8 s on two CPU cores (a 1024 px
    ViT encoder). So the file, the loader, the Ultralytics SAM object and our inputs are real; the call records what
    it was given and answers with a real Ultralytics Results, as SAM's own postprocess builds it (mask + box, score,
    placeholder class). test_sam_predict_runs_for_real (slow) runs the unreplaced call once.
    """
    from ultralytics.engine.results import Results

    model = load_sam(str(mobile_sam_file))
    image = Image.open(BUS).convert("RGB")
    seen = {}
    answer = torch.zeros((1, 1080, 810), dtype=torch.bool)
    answer[0, 420:880, 60:240] = True
    answer[0, 500:520, 100:120] = False  # a hole, to be filled

    def predict(source, bboxes=None, conf=None, verbose=None, **kwargs):
        seen.update(source=source, bboxes=bboxes, conf=conf, kwargs=kwargs)
        boxes = torch.tensor([[60.0, 420.0, 240.0, 880.0, 0.93, 0.0]])
        return [Results(source, path="image0.jpg", names={0: "0"}, boxes=boxes, masks=answer)]

    monkeypatch.setattr(model, "predict", predict)
    case = Case("bus_person", BUS, BUS_BOX, "x", (810, 1080))
    mask, facts = make_mask(case, image, "sam", model, **mask_settings(conf=0.25, on_miss="error", holes=True,
                                                                        min_area=64, clip=False))
    # What SAM was given: the photo as OpenCV reads it (BGR, full size), the box as the one prompt, the threshold.
    assert seen["bboxes"] == [list(BUS_BOX)] and seen["conf"] == 0.25 and not seen["kwargs"]
    assert seen["source"].shape == (1080, 810, 3) and (seen["source"][..., ::-1] == np.asarray(image)).all()
    assert facts["method"] == "sam" and facts["class"] is None and facts["confidence"] == 0.93
    expected = answer[0].numpy() | box_mask((810, 1080), (100, 500, 120, 520))  # the hole filled, nothing grown
    assert (mask == expected).all()
    # SAM returning nothing is a miss like YOLO's.
    monkeypatch.setattr(model, "predict", lambda source, **kw: [Results(source, "image0.jpg", {}, masks=None)])
    with pytest.raises(ConfigError, match="case 'bus_person': sam found no instance with confidence >= 0.25"):
        make_mask(case, image, "sam", model, **mask_settings(conf=0.25, on_miss="error"))


@pytest.mark.slow
def test_sam_predict_runs_for_real(mobile_sam_file):
    """The unreplaced SAM call (~8 s): Ultralytics accepts our BGR photo and box prompt and answers at full size.

    With random weights its one mask's quality score is below 0, the lowest threshold Ultralytics allows, so the
    answer is "no instance" and on_miss=box falls back to the box, saying why.
    """
    model = load_sam(str(mobile_sam_file))
    image = Image.open(BUS).convert("RGB")
    found = sam_instances(model, image, BUS_BOX, conf=0.0)
    assert found.masks.shape[1:] == (1080, 810) and len(found.masks) <= 1 and found.classes is None
    assert len(found.confidences) == len(found.masks)
    case = Case("bus_person", BUS, BUS_BOX, "x", (810, 1080))
    mask, facts = make_mask(case, image, "sam", model, **mask_settings(conf=0.0, on_miss="box"))
    if len(found.masks):  # a real mask came back: it is used
        assert facts["method"] == "sam" and mask.any()
    else:
        assert facts["method"] == "box" and (mask == box_mask((810, 1080), BUS_BOX)).all()
        assert facts["method_reason"] == "sam found no instance with confidence >= 0; mask.on_miss=box"


def test_missing_sam_weights_are_named_not_downloaded(tmp_path):
    with pytest.raises(ConfigError, match="SAM weights not found locally: mask.sam_weights='mobile_sam.pt'"):
        load_sam("mobile_sam.pt")
    odd = tmp_path / "my_sam.pt"
    odd.write_bytes(b"")
    with pytest.raises(ConfigError, match="the file name must end with one of sam_h.pt"):
        load_sam(str(odd))


def test_missing_yolo_weights_are_named_not_downloaded(tmp_path):
    with pytest.raises(ConfigError, match="YOLO weights not found locally: mask.weights='yolov8n-seg.pt'"):
        load_yolo("yolov8n-seg.pt")


def test_prepare_stage_reports_a_bad_box_in_one_line(tmp_path, manifest, photo):
    """The prepare stage's one run in its own process: a bad input is one `error:` line and exit code 2."""
    path = manifest(tmp_path, [{"id": "c1", "image": "photo.png", "box": [0, 0, 500, 10], "prompt": "x"}], photo)
    result = run(["python", "stages/prepare.py", f"cases={path}", f"paths.prepare={tmp_path}/out"], check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: case 'c1': box=[0, 0, 500, 10] lies outside the 100x80 image"
    assert not (tmp_path / "out").exists()
