"""report: runs.csv has a row per image, metrics and plots for DVC, one labelled grid per slice (input and mask beside
it, failed cells marked, split at the size cap), axes found from what varied (any config key), the weight-free
quality metrics, diversity across seeds, the optional CLIP score, the Comet report archive."""

import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from inpaint_sweep.config import REPO_ROOT, ConfigError, RunError, check_report_config, load_config
from inpaint_sweep.grids import labelled_grid
from inpaint_sweep.images import save_image, to_mask_image, write_json
from inpaint_sweep.report import AUTO_GRID, PLOT_METRICS, build_report

from conftest import GRID, report_settings, run, stage_env


def test_report_tables_metrics_plots_and_grids(tmp_path, fake_cells):
    n = fake_cells(tmp_path, failed={(7.5, 1.0, 8, "")})
    report = build_report(tmp_path / "cells", tmp_path / "report", **report_settings(rows="guidance", cols="strength"))
    out = tmp_path / "report"
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == n == 24  # a row per image
    assert {"guidance", "strength", "steps", "negative_prompt", "seed", "drift_psnr", "seconds", "peak_memory_mb",
            "model_revision", "comet"} <= set(runs.columns)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cells"] == 24 and metrics["ok"] == 23 and metrics["failed"] == 1
    assert metrics["grids"] == report["grids"] == 4  # one per (steps, negative prompt) slice
    assert metrics["mean"]["peak_memory_mb"] == pytest.approx(500 + np.mean([i for i in range(1, 25) if i != 15]))
    best = json.loads((out / "best.json").read_text())
    assert best["seconds"]["cell_id"] == "case-000" and best["drift_psnr"]["cell_id"] == "case-000"
    assert best["peak_memory_mb"]["better"] == "lower"
    by_axis = pd.read_csv(out / "by_axis.csv", keep_default_na=False)
    assert list(dict.fromkeys(by_axis["axis"])) == ["steps", "guidance", "strength", "negative_prompt"]  # seed: 1 value
    assert by_axis[by_axis["axis"] == "guidance"]["images"].tolist() == [8, 7, 8]
    assert by_axis[by_axis["axis"] == "negative_prompt"]["value"].tolist() == ["(none)", "cartoon"]
    # plots/<metric>.csv: a row per value of every axis (what dvc.yaml's plots read); plots/axes/<axis>.csv per axis.
    for metric in PLOT_METRICS:
        plot = pd.read_csv(out / "plots" / f"{metric}.csv", keep_default_na=False)
        assert len(plot) == 3 + 2 + 2 + 2 and {"setting", metric} <= set(plot.columns)
        assert "negative_prompt = (none)" in plot["setting"].tolist()
    assert sorted(p.stem for p in (out / "plots" / "axes").glob("*.csv")) == sorted(GRID)
    assert len(pd.read_csv(out / "plots" / "axes" / "guidance.csv")) == 3
    grids = sorted((out / "grids").glob("*.png"))
    assert [g.name for g in grids] == [
        "case__steps=4__negative_prompt=cartoon.png", "case__steps=4__negative_prompt=none.png",
        "case__steps=8__negative_prompt=cartoon.png", "case__steps=8__negative_prompt=none.png"]
    assert sorted(g["cells"] for g in report["grid_files"]) == [5, 6, 6, 6]  # 3x2 labelled cells, one failed
    thumbs = sorted(p.name for p in (out / "thumbs").glob("*.jpg"))
    assert len([t for t in thumbs if not t.endswith("-diff.jpg")]) == 23  # a thumbnail and a difference heatmap
    assert len([t for t in thumbs if t.endswith("-diff.jpg")]) == 23  # per ok image
    assert len(list((out / "thumbs").glob("mask-*.png"))) == 1  # one mask outline per mask
    # The weight-free quality metrics, from the saved images: random pixels over a random photo.
    assert {"seam", "edge_delta_e", "texture_ratio", "outside_psnr", "outside_ssim"} <= set(metrics["mean"])
    assert runs.loc[runs["status"] == "ok", "seam"].notna().all()


def test_stale_grids_of_an_earlier_sweep_are_removed(tmp_path, fake_cells):
    fake_cells(tmp_path)
    build_report(tmp_path / "cells", tmp_path / "report", **report_settings(rows="guidance", cols="strength"))
    build_report(tmp_path / "cells", tmp_path / "report", **report_settings(rows="guidance", cols="steps"))
    names = sorted(g.name for g in (tmp_path / "report" / "grids").glob("*.png"))
    assert names == ["case__strength=0.75__negative_prompt=cartoon.png",
                     "case__strength=0.75__negative_prompt=none.png",
                     "case__strength=1__negative_prompt=cartoon.png",
                     "case__strength=1__negative_prompt=none.png"]


def test_diversity_across_seeds(tmp_path, fake_cells):
    grid = {"guidance": (5.0, 7.5), "strength": (1.0,), "steps": (4,), "negative_prompt": ("",)}
    fake_cells(tmp_path / "a", grid, seeds=(0, 1, 2))
    report = build_report(tmp_path / "a" / "cells", tmp_path / "a" / "report",
                          **report_settings(rows="guidance", cols="seed"))
    runs = report["df"]
    assert len(runs) == 6 and runs["diversity"].nunique() == 2  # one value per cell, shared by its 3 seeds
    # Uniform random bytes: the mean |a - b| of two independent images is about 1/3 of the range.
    assert runs["diversity"].between(0.28, 0.39).all()
    assert report["grids"] == 1 and report["grid_files"][0]["cells"] == 6  # guidance x seed
    # Seed not on the grid: one grid per seed, and diversity still sees every seed of a cell.
    fake_cells(tmp_path / "b", {**grid, "strength": (0.75, 1.0)}, seeds=(0, 1), same_pixels=True)
    same = build_report(tmp_path / "b" / "cells", tmp_path / "b" / "report", **report_settings())
    assert (same["rows"], same["cols"], same["grids"]) == ("guidance", "strength", 2)
    assert (same["df"]["diversity"] == 0).all()
    # One seed per cell: diversity is unmeasured, not zero, and stays out of the DVC metrics.
    fake_cells(tmp_path / "c", grid)
    single = build_report(tmp_path / "c" / "cells", tmp_path / "c" / "report", **report_settings())
    assert single["df"]["diversity"].isna().all() and "diversity" not in single["mean"]
    assert (single["rows"], single["cols"]) == ("guidance", None)  # one axis varied: it is not also the columns


def _ink(region: Image.Image) -> int:
    return int((np.asarray(region.convert("L")) < 128).sum())


def test_grid_has_labels_on_the_margins_and_marks_missing_cells():
    cell = Image.new("RGB", (30, 40), (0, 128, 0))
    cells = {(r, c): cell for r in (5, 7.5, 12) for c in (0.75, 1.0)}
    cells[(7.5, 1.0)] = None
    grid = labelled_grid(cells, [5, 7.5, 12], [0.75, 1.0], "guidance", "strength", "title", cell_size=90)
    arr = np.asarray(grid)
    green = (arr[:, :, 0] == 0) & (arr[:, :, 1] == 128) & (arr[:, :, 2] == 0)
    assert green.sum() == 5 * 90 * 120  # five real cells at 90x120 (aspect kept)
    rows, cols = np.nonzero(green)
    left, top = cols.min(), rows.min()
    # Text in the left margin beside each row and above each column.
    for i in range(3):
        assert _ink(grid.crop((0, top + i * 124, left, top + i * 124 + 120))) > 30
    assert _ink(grid.crop((left, top - 30, grid.width, top))) > 60
    # The label text depends on the values: another axis name draws other pixels.
    other = labelled_grid(cells, [5, 7.5, 12], [0.75, 1.0], "steps", "strength", "title", cell_size=90)
    assert np.asarray(other.crop((0, top, left, grid.height))).tobytes() != arr[top:, :left].tobytes()
    # The missing cell is a marked blank: red marks where the image would be.
    x, y = left + 1 * 94, top + 1 * 124
    blank = arr[y:y + 120, x:x + 90]
    assert ((blank[:, :, 0] > 150) & (blank[:, :, 1] < 60)).sum() > 100


def test_grid_shows_input_and_mask_beside_it():
    cells = {(r, c): Image.new("RGB", (30, 40), (0, 128, 0)) for r in (1, 2) for c in (1, 2)}
    side = {"input": Image.new("RGB", (30, 40), (0, 0, 255)), "mask": Image.new("RGB", (30, 40), (255, 0, 255))}
    grid = np.asarray(labelled_grid(cells, [1, 2], [1, 2], "steps", "seed", "t", cell_size=60, side=side))
    blue = (grid[:, :, 0] == 0) & (grid[:, :, 1] == 0) & (grid[:, :, 2] == 255)
    magenta = (grid[:, :, 0] == 255) & (grid[:, :, 1] == 0) & (grid[:, :, 2] == 255)
    green = (grid[:, :, 0] == 0) & (grid[:, :, 1] == 128) & (grid[:, :, 2] == 0)
    assert blue.sum() == magenta.sum() == green.sum() / 4 == 60 * 80
    # Input above mask, both left of every grid cell.
    assert np.nonzero(blue)[0].max() < np.nonzero(magenta)[0].min()
    assert max(np.nonzero(blue)[1].max(), np.nonzero(magenta)[1].max()) < np.nonzero(green)[1].min()


def test_a_grid_over_the_megapixel_cap_is_split_into_parts_not_shrunk(tmp_path, fake_cells):
    fake_cells(tmp_path, {**GRID, "steps": (4,), "negative_prompt": ("",)})
    report = build_report(tmp_path / "cells", tmp_path / "capped",
                          **report_settings(rows="guidance", cols="strength", cell_size=1200, max_megapixels=12))
    parts = report["grid_files"]
    assert len(parts) > 1 and sum(g["cells"] for g in parts) == 6  # every cell drawn once, at full size
    for g in parts:
        assert g["cell_width"] == 1200 and "part" in g["path"].name
        with Image.open(g["path"]) as im:
            assert im.width * im.height <= 12e6
    with pytest.raises(ConfigError, match="report.max_megapixels=0.001 is too small for one cell"):
        build_report(tmp_path / "cells", tmp_path / "tiny",
                     **report_settings(rows="guidance", cols="strength", max_megapixels=0.001))


@pytest.mark.parametrize("overrides, words", [
    (["report.rows=seed", "report.cols=seed"], "report.rows and report.cols must differ, both are 'seed'"),
    (["report.cell_size=4"], "report.cell_size must be >= 16 pixels, got report.cell_size=4"),
    (["report.max_megapixels=0"], "report.max_megapixels must be in (0, 89], got report.max_megapixels=0"),
    (["report.max_megapixels=500"], "got report.max_megapixels=500"),
])
def test_bad_report_settings_are_named(overrides, words):
    check_report_config(load_config().report)  # params.yaml's own values pass
    with pytest.raises(ConfigError) as e:
        check_report_config(load_config(overrides).report)
    assert words in str(e.value)


def test_two_names_of_one_axis_are_refused_as_rows_and_cols(tmp_path):
    config_cells(tmp_path, [{"model.scheduler": s, "guidance": g} for s in ("ddim", "euler") for g in (5.0, 7.5)])
    with pytest.raises(ConfigError, match="report.rows='scheduler' and report.cols='model.scheduler' are the same "
                                          "axis, model.scheduler"):
        build_report(tmp_path / "cells", tmp_path / "report", **report_settings(rows="scheduler",
                                                                                 cols="model.scheduler"))


def test_an_unreadable_cell_record_is_a_run_error(tmp_path, fake_cells):
    fake_cells(tmp_path, {**GRID, "steps": (4,), "negative_prompt": ("",)})
    next((tmp_path / "cells").glob("*/record.json")).write_text("{cut off")
    with pytest.raises(RunError, match="is not valid JSON .*: run generate again"):
        build_report(tmp_path / "cells", tmp_path / "report", **report_settings())


def test_params_yaml_describes_the_automatic_rows_and_cols():
    """report.rows / report.cols null pick AUTO_GRID's axes first: params.yaml's comments on them say which."""
    from inpaint_sweep.cli import key_comments

    comments = key_comments((REPO_ROOT / "params.yaml").read_text())
    for key, axis in zip(("report.rows", "report.cols"), AUTO_GRID):
        assert f"null = {axis} if it varied" in comments[key][1], key


def test_report_stage_rejects_a_key_that_did_not_vary(tmp_path, fake_cells, report_stage):
    fake_cells(tmp_path / "generate", {**GRID, "steps": (4,)})
    for key in ("colour", "steps"):  # unknown; known but one value only
        with pytest.raises(ConfigError) as e:
            report_stage([f"report.rows={key}", f"paths.generate={tmp_path / 'generate'}",
                          f"paths.report={tmp_path / 'report'}", "tracking.comet=false"])
        assert str(e.value) == (f"report.rows='{key}' did not vary in this sweep; choose one of the axes that did "
                                "(guidance, strength, negative_prompt)")


def test_report_stage_writes_html_and_a_comet_archive_holding_the_grids(tmp_path, fake_cells):
    """The report stage's one end-to-end run, in its own process (as `dvc repro` runs it), with Comet offline."""
    from inpaint_sweep import ratings

    fake_cells(tmp_path / "generate")
    out = tmp_path / "report"
    for k in range(6):  # people's answers: the report's experiment carries their ranking too
        ratings.append(tmp_path / "ratings", ratings.new_answer("ann", "case", (f"case-{k:03d}", 0),
                                                                (f"case-{k + 6:03d}", 0), "left"))
    ran = run(["python", "stages/report.py", f"paths.generate={tmp_path / 'generate'}", f"paths.report={out}",
               f"paths.ratings={tmp_path / 'ratings'}"], env=stage_env(COMET_API_KEY=""))
    assert "people's choice: 6 answer(s) by 1 rater(s) about 12 image(s)" in ran.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["images"], metrics["ok"], metrics["failed"], metrics["grids"]) == (24, 24, 0, 4)
    assert (metrics["human"]["answers"], metrics["human"]["rated_images"]) == (6, 12)
    html = (out / "index.html").read_text()
    assert "http" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert html.count('<img loading="lazy" src="grids/') == 4 and html.count('"t":"thumbs/case-') == 24
    assert "v2-seed0" in html and "case-000.zip" in html  # model revision and the cell's Comet archive
    # One report experiment: its offline archive holds every grid, byte for byte, and the tables.
    (archive,) = (out / "comet").glob("*.zip")
    assert archive.name in html
    with zipfile.ZipFile(archive) as z:
        experiment = json.loads(z.read("experiment.json"))
        uploads = [json.loads(line)["payload"] for line in z.read("messages.json").decode().splitlines()]
        uploads = [p for p in uploads if "file_path" in p]
        images = {p["additional_params"]["figName"]: z.read(p["file_path"]) for p in uploads
                  if p["upload_type"] == "visualization"}
        assets = {p.get("additional_params", {}).get("fileName") or p.get("file_name") for p in uploads
                  if p["upload_type"] != "visualization"}
    assert {"kind:report", "report-of:sweep-1"} <= set(experiment["tags"])
    assert not any(tag.startswith("sweep:") for tag in experiment["tags"])  # a sweep's cells filter without it
    grids = {g.stem: Image.open(g).size for g in (out / "grids").glob("*.png")}
    sent = {name: Image.open(io.BytesIO(data)) for name, data in images.items()}
    assert len(grids) == 4 and {n: p.size for n, p in sent.items()} == grids  # every grid, full size,
    assert {p.format for p in sent.values()} == {"JPEG"}  # in tracking.image_format (jpeg by default)
    assert {"runs.csv", "by_axis.csv", "best.json", "metrics.json", "ranking.csv", "index.html",
            "cell_experiments.json"} <= assets
    assert {f"people-{axis}.svg" for axis in ("guidance", "strength", "steps", "negative_prompt")} <= assets


def test_dvc_plots_declared_in_dvc_yaml_match_the_report():
    plots = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["plots"]
    curves = {name: spec for entry in plots if isinstance(entry, dict) for name, spec in entry.items()}
    assert set(curves) == {f"{m} by setting" for m in PLOT_METRICS}
    for name, spec in curves.items():
        metric = name.removesuffix(" by setting")
        assert spec == {"template": "bar_horizontal", "x": metric,
                        "y": {f"${{paths.report}}/plots/{metric}.csv": "setting"}}
    assert "${paths.report}/grids" in plots  # the grids as image plots


@pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning")  # inside DVC (its trie library)
def test_dvc_plots_show_renders_the_report(tmp_path, fake_cells, monkeypatch):
    """`dvc plots show` on the real dvc.yaml and params.yaml, in a scratch DVC project holding a report: its JSON from
    the `dvc` command (DVC's console keeps the stdout of the first test that imported it, so in this process its JSON
    could land in another test's capture), then the page rendered by DVC's command line called in this process."""
    from dvc.cli import main as dvc
    from dvc.repo import Repo

    for name in ("dvc.yaml", "params.yaml"):
        (tmp_path / name).write_text((REPO_ROOT / name).read_text())
    Repo.init(str(tmp_path), no_scm=True).close()
    report_dir = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["paths"]["report"]
    fake_cells(tmp_path / "gen")
    build_report(tmp_path / "gen" / "cells", tmp_path / report_dir, **report_settings(rows="guidance", cols="strength"))
    monkeypatch.chdir(tmp_path)
    shown = json.loads(run(["dvc", "plots", "show", "--json"], cwd=tmp_path).stdout)
    assert not shown.get("errors")
    data = shown["data"]
    values = data["drift_psnr by setting"][0]["content"]["data"]["values"]
    assert [v["setting"] for v in values][:5] == ["steps = 4", "steps = 8", "guidance = 5", "guidance = 7.5",
                                                  "guidance = 12"]
    assert len([k for k in data if k.endswith(".png")]) == 4 and len(data) == len(PLOT_METRICS) + 4
    assert dvc(["plots", "show", "-o", str(tmp_path / "page")]) == 0
    page = (tmp_path / "page" / "index.html").read_text()
    assert "texture_ratio by setting" in page and page.count("<img") == 4


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIP saved like a real checkpoint folder: model, tokenizer and image processor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from inpaint_sweep.tiny_model import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    path = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def test_clip_score_with_a_tiny_offline_clip(tmp_path, fake_cells, tiny_clip):
    from inpaint_sweep.clip_score import clip_cosines, clip_scores, load_clip

    clip = load_clip(str(tiny_clip))
    grid = {"guidance": (5.0, 7.5), "strength": (1.0,), "steps": (4,), "negative_prompt": ("",)}
    fake_cells(tmp_path, grid, seeds=(0, 1))
    report = build_report(tmp_path / "cells", tmp_path / "report", **report_settings(clip=clip))
    scores = report["df"]["clip_score"]
    assert len(scores) == 4 and scores.between(0, 100).all()
    assert "clip_score" in report["mean"] and report["best"]["clip_score"]["better"] == "higher"
    # Random weights put cosines near 0, so test the cosine behind the score: same image and prompt, same cosine;
    # another prompt or another image, another cosine; the score is 100 x max(cosine, 0).
    one, two = (Image.open(p) for p in report["df"]["image"][:2])
    cos = clip_cosines(clip, [one, one, one, two], ["a red fox", "a red fox", "zzzz qqqq", "a red fox"])
    assert cos[0] == pytest.approx(cos[1]) and len({round(c, 5) for c in cos}) == 3
    expected = [100 * max(c, 0) for c in cos[::3]]
    assert clip_scores(clip, [one, two], ["a red fox"] * 2) == pytest.approx(expected, abs=1e-3)


def test_clip_model_that_cannot_load_is_a_config_error(tmp_path):
    from inpaint_sweep.clip_score import load_clip

    with pytest.raises(ConfigError, match=f"report.clip_model='{tmp_path}' could not be loaded offline"):
        load_clip(str(tmp_path))


def test_peak_memory_on_cpu_sees_an_allocation_and_resets():
    from inpaint_sweep.inpaint import peak_memory_mb, reset_peak_memory

    reset_peak_memory("cpu")
    before = peak_memory_mb("cpu")
    # 512 MiB, touched: twice the threshold, because what the process frees meanwhile comes off the peak (in a full
    # `make test` a 300 MiB block once raised it by only 212 MB).
    block = np.ones(512 * 2**20, dtype=np.uint8)
    with_block = peak_memory_mb("cpu")
    del block
    reset_peak_memory("cpu")
    assert with_block - before > 250
    assert peak_memory_mb("cpu") < with_block - 250  # a new peak after the reset (Linux: /proc/self/clear_refs)


LONG_PROMPT = "a realistic green dragon with golden scales breathing blue fire over a rainy city street at dusk"


def config_cells(root, settings: list[dict], with_config=True):
    """Cells whose records carry the whole resolved config (`config`, flat dotted keys), as generate will write."""
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)
    save_image(Image.fromarray(photo), root / "input.png")
    mask = np.zeros((40, 30), bool)
    mask[10:30, 5:20] = True
    save_image(to_mask_image(mask), root / "mask.png")
    for n, extra in enumerate(settings):
        cid = f"case-{n:03d}"
        pixels = photo.copy()
        pixels[mask] = rng.integers(0, 255, (mask.sum(), 3), dtype=np.uint8)
        path = root / "cells" / cid / "seed-0.png"
        save_image(Image.fromarray(pixels), path)
        config = {"steps": 4, "guidance": 7.5, "strength": 1.0, "negative_prompt": "", "seed": 0, "prompt": None,
                  "model.name": "tiny", "model.id": None, "model.scheduler": None, "mask.dilate": 8, **extra}
        record = {"cell_id": cid, "status": "ok", "error": None, "case": "case",
                  "prompt": config["prompt"] or "a red fox", "steps": config["steps"], "guidance": config["guidance"],
                  "strength": config["strength"], "negative_prompt": config["negative_prompt"], "seed": 0,
                  "model": config["model.name"], "scheduler": config["model.scheduler"], "padding_mask_crop": None,
                  "input": str(root / "input.png"), "mask": str(root / "mask.png"), "soft_mask": None,
                  "working_size": [24, 32], "sweep_id": "s", "images": [
                      {"seed": 0, "path": str(path), "nsfw": False, "metrics": {"seconds": 0.1 * (n + 1)}}]}
        if with_config:
            record["config"] = config
        write_json(record, root / "cells" / cid / "record.json")
    return len(settings)


def test_the_report_follows_any_swept_key_scheduler_x_guidance(tmp_path):
    """A scheduler sweep (one value the checkpoint's own: null) x guidance: no two cells share a grid position."""
    grid = [{"model.scheduler": s, "guidance": g} for s in (None, "euler_a", "dpmpp_2m") for g in (5.0, 7.5)]
    n = config_cells(tmp_path, grid)
    report = build_report(tmp_path / "cells", tmp_path / "report",
                          **report_settings(rows="scheduler"))  # the last part is enough
    assert report["axes"] == ["guidance", "model.scheduler"]
    assert (report["rows"], report["cols"]) == ("model.scheduler", "guidance")
    assert report["grids"] == 1 and sum(g["cells"] for g in report["grid_files"]) == n == 6  # drawn cells == cells
    by_axis = pd.read_csv(tmp_path / "report" / "by_axis.csv", keep_default_na=False)
    assert by_axis[by_axis["axis"] == "model.scheduler"]["value"].tolist() == ["(default)", "dpmpp_2m", "euler_a"]
    runs = pd.read_csv(tmp_path / "report" / "runs.csv", keep_default_na=False)
    assert sorted(set(runs["model.scheduler"])) == ["(default)", "dpmpp_2m", "euler_a"]
    assert set(runs["negative_prompt"]) == {"(none)"}  # the same words in every table
    plot = pd.read_csv(tmp_path / "report" / "plots" / "seam.csv")
    assert "model.scheduler = (default)" in plot["setting"].tolist()
    assert (tmp_path / "report" / "plots" / "axes" / "model.scheduler.csv").is_file()
    # Keys that always change together are one axis; either name picks it.
    twins = [{"model.name": m, "model.id": f"/models/{m}", "guidance": g} for m in ("a", "b") for g in (5.0, 7.5)]
    config_cells(tmp_path / "twins", twins)
    report = build_report(tmp_path / "twins" / "cells", tmp_path / "twins" / "report",
                          **report_settings(rows="model.id"))
    assert report["axes"] == ["guidance", "model.id"] and report["twins"]["model.id"] == ["model.name"]
    assert report["rows"] == "model.id" and sum(g["cells"] for g in report["grid_files"]) == 4
    with pytest.raises(ConfigError, match=r"report.cols='mask.dilate' did not vary in this sweep; choose one of "
                                          r"the axes that did \(guidance, model.id\)"):
        build_report(tmp_path / "twins" / "cells", tmp_path / "twins" / "report", **report_settings(cols="mask.dilate"))


def test_three_swept_keys_slice_the_grids_and_records_without_config_still_read(tmp_path):
    grid = [{"mask.dilate": d, "model.scheduler": s, "guidance": g}
            for d in (4, 8) for s in ("euler", "ddim") for g in (5.0, 7.5)]
    n = config_cells(tmp_path, grid)
    report = build_report(tmp_path / "cells", tmp_path / "report",
                          **report_settings(rows="guidance", cols="mask.dilate"))
    assert [g["path"].name for g in report["grid_files"]] == ["case__model.scheduler=ddim.png",
                                                              "case__model.scheduler=euler.png"]
    assert sum(g["cells"] for g in report["grid_files"]) == n
    # Today's records (no `config`): the top-level fields are read under the same names.
    old = [{"model.scheduler": s, "guidance": g} for s in ("euler", None) for g in (5.0, 7.5)]
    config_cells(tmp_path / "old", old, with_config=False)
    report = build_report(tmp_path / "old" / "cells", tmp_path / "old" / "report",
                          **report_settings(rows="scheduler", cols="guidance"))
    assert report["axes"] == ["guidance", "model.scheduler"] and sum(g["cells"] for g in report["grid_files"]) == 4


def test_a_long_prompt_is_short_on_the_margin_and_whole_in_the_table(tmp_path):
    from inpaint_sweep.grids import short

    config_cells(tmp_path, [{"prompt": p, "guidance": g} for p in ("a fox", LONG_PROMPT) for g in (5.0, 7.5)])
    report = build_report(tmp_path / "cells", tmp_path / "report", **report_settings(rows="prompt", cols="guidance"))
    assert report["rows"] == "prompt"
    label = short(LONG_PROMPT)
    assert len(label) <= 28 and label.startswith("a realistic") and "..." in label
    by_axis = pd.read_csv(tmp_path / "report" / "by_axis.csv")
    assert LONG_PROMPT in by_axis["value"].tolist()  # whole in the tables
    from inpaint_sweep.html_report import render

    html = render(report, ["seconds"], "prompt", "guidance", None)
    assert LONG_PROMPT in html and f"prompt = {label}" not in html  # whole in the table's data; charts shorten it
    wide = build_report(tmp_path / "cells", tmp_path / "wide",
                        **report_settings(rows="guidance", cols="prompt"))["grid_files"][0]
    assert wide["size"][0] < 1400  # the long label did not widen the grid


@pytest.mark.slow
def test_stage_report_of_a_real_scheduler_x_guidance_sweep(tmp_path, prepared, report_stage):
    """`generate.py -m model.scheduler=euler_a,dpmpp_2m guidance=5,7.5` on the tiny model, then the report stage:
    every cell drawn once, the scheduler an axis everywhere, the quality metrics in runs.csv and by_axis.csv."""
    gen = tmp_path / "gen"
    run(["python", "stages/generate.py", "-m", "model.scheduler=euler_a,dpmpp_2m", "guidance=5,7.5",
         "hydra.sweeper.params.strength=1.0", "hydra.sweeper.params.steps=2", "hydra.sweeper.params.negative_prompt=''",
         "model.size=64", "tracking.comet=false", f"paths.prepare={prepared}", f"paths.generate={gen}",
         f"paths.cell_store={tmp_path}/store", f"hydra.sweep.dir={gen}/hydra/multirun", f"hydra.run.dir={gen}/hydra/run",
         f"model.cache_dir={tmp_path}/models"], timeout=600)
    out = tmp_path / "report"
    report_stage(["report.rows=scheduler", f"paths.generate={gen}", f"paths.report={out}", "tracking.comet=false"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["cells"], metrics["images"], metrics["ok"], metrics["failed"], metrics["grids"]) == (4, 4, 4, 0, 1)
    assert metrics["axes"] == ["guidance", "model.scheduler"]
    assert "1 grid(s) of model.scheduler (rows) &times; guidance (columns)" in (out / "index.html").read_text()
    runs = pd.read_csv(out / "runs.csv")
    quality = ["seam", "edge_delta_e", "texture_ratio", "outside_psnr", "outside_ssim"]
    assert runs[quality].notna().all().all() and (runs["outside_psnr"] == 100).all()  # exact outside the mask
    by_axis = pd.read_csv(out / "by_axis.csv")
    assert sorted(by_axis.loc[by_axis["axis"] == "model.scheduler", "value"]) == ["dpmpp_2m", "euler_a"]
    assert {f"{m}_mean" for m in quality} <= set(by_axis.columns)
    assert (out / "plots" / "axes" / "model.scheduler.csv").is_file()
