"""Photos as a viewer shows them: EXIF orientation applied, any bit depth or pixel mode turned into the 8-bit RGB picture
it shows, transparency composited on white with one warning, and an undecodable file stopped with a sentence naming
the case and the file (which the stage prints as one line with exit code 2: tests/test_prepare.py runs it).

Every test image is made here (numpy + Pillow) and most go through the real prepare stage (its main(), in-process).
"""

import numpy as np
import pytest
from PIL import Image

from inpaint_sweep.config import ConfigError
from inpaint_sweep.images import load_photo

RED, BLUE = (220, 20, 20), (20, 40, 200)


@pytest.fixture
def prepare_one(tmp_path, manifest, prepare_stage):
    """prepare_one(image, box, case_id="c1") -> (its record, its folder): the prepare stage on a one-case manifest."""

    def prepare(image: str, box, case_id="c1"):
        cases = manifest(tmp_path, [{"id": case_id, "image": image, "box": box, "prompt": "x"}])
        (record,) = prepare_stage([f"cases={cases}", f"paths.prepare={tmp_path / 'out'}", "mask.method=box"])
        return record, tmp_path / "out" / case_id

    return prepare


def gradient(width=64, height=32) -> np.ndarray:
    """0..1 left to right: a picture whose mean (0.5) and direction show at once."""
    return np.tile(np.linspace(0.0, 1.0, width), (height, 1))


# 1. EXIF orientation --------------------------------------------------------------------------------------------------


def upright_scene() -> Image.Image:
    """120x60 as the user sees it: blue, with a red patch at x 80..115, y 10..50 (the region the box is drawn on)."""
    scene = np.zeros((60, 120, 3), np.uint8)
    scene[:] = BLUE
    scene[10:50, 80:115] = RED
    return Image.fromarray(scene)


@pytest.mark.parametrize("orientation, stored_as", [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270),
                                                    (3, Image.Transpose.ROTATE_180)])
def test_phone_photo_is_prepared_upright_and_the_box_lands_on_what_the_user_sees(tmp_path, prepare_one, orientation,
                                                                                  stored_as):
    # A phone stores the sensor's pixels (here sideways or upside down) and an EXIF tag saying how to show them.
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright_scene().transpose(stored_as).save(tmp_path / "phone.jpg", quality=95, exif=exif)
    with Image.open(tmp_path / "phone.jpg") as stored:
        assert stored.size == ((60, 120) if orientation != 3 else (120, 60))  # as stored: not what a viewer shows
    box = [80, 10, 115, 50]  # drawn on the upright view; lies outside the sideways 60x120 pixels
    record, folder = prepare_one("phone.jpg", box)
    assert record["image_size"] == [120, 60] and record["box"] == box
    assert record["source_image"].endswith("phone.jpg") and record["image"] == str(folder / "image.png")
    # generate reads image.png: upright, so its outputs are saved upright; the mask covers the red patch exactly.
    prepared = np.asarray(Image.open(record["image"]))
    assert prepared.shape == (60, 120, 3)
    mask = np.asarray(Image.open(folder / "mask.png")) > 127
    inside = prepared[mask].mean(axis=0)
    outside = prepared[~mask].mean(axis=0)
    assert np.abs(inside - RED).max() < 12 and np.abs(outside - BLUE).max() < 12  # JPEG: close, not exact
    assert Image.open(folder / "overlay.png").size == (120, 60)
    # What generate decodes (cells.decode_inputs, the loader) is that upright photo: the base mask, not grown.
    from inpaint_sweep.cells import decode_inputs
    from inpaint_sweep.records import PreparedCase

    image, decoded_mask, _ = decode_inputs(PreparedCase.from_dict(record), dilate=0, feather=0, clip=False)
    assert image.size == (120, 60) and (decoded_mask == mask).all()


# 2. Bit depths and pixel modes ------------------------------------------------------------------------------------


def test_16_bit_png_is_prepared_as_the_photo_not_white(tmp_path, prepare_one):
    source = (gradient() * 65535).astype(np.uint16)
    Image.fromarray(source).save(tmp_path / "deep.png")  # mode I;16: Pillow's convert("RGB") made this all white
    with Image.open(tmp_path / "deep.png") as opened:
        assert opened.mode == "I;16"
    record, folder = prepare_one("deep.png", [10, 5, 40, 25])
    prepared = np.asarray(Image.open(record["image"])).astype(float)
    assert prepared.shape == (32, 64, 3) and (prepared[..., 0] == prepared[..., 2]).all()
    assert abs(prepared.mean() - source.mean() / 257) < 1.0  # scaled by the bit depth: mean ~127.5, not 255
    assert prepared[:, 0].max() == 0 and prepared[:, -1].min() == 255  # black to white, like the photo
    assert (np.diff(prepared[0, :, 0]) >= 0).all()


def _written(tmp_path, mode: str) -> tuple[str, float]:
    """A gradient in `mode`, written in a format that keeps the mode; returns the file and its expected 8-bit mean."""
    g = gradient()
    if mode == "I;16B":
        return _save(tmp_path, Image.fromarray((g * 65535).astype(">u2")), "tif"), 127.5
    if mode == "I":
        return _save(tmp_path, Image.fromarray((g * (2**31 - 1)).astype(np.int32)), "tif"), 127.5
    if mode == "F":
        return _save(tmp_path, Image.fromarray(g.astype(np.float32)), "tif"), 127.5
    if mode == "L":
        return _save(tmp_path, Image.fromarray((g * 255).round().astype(np.uint8)), "png"), 127.5
    if mode == "1":
        return _save(tmp_path, Image.fromarray((g * 255).round().astype(np.uint8)).convert("1", dither=0), "png"), \
            255 * (g >= 0.5).mean()
    if mode == "P":
        rgb = np.stack([(g * 255).round()] * 3, axis=-1).astype(np.uint8)
        return _save(tmp_path, Image.fromarray(rgb).quantize(256), "png"), 127.5
    if mode == "CMYK":  # cyan 0, magenta 255, yellow 255, black 0: red
        return _save(tmp_path, Image.new("CMYK", (64, 32), (0, 255, 255, 0)), "tif"), (255 + 0 + 0) / 3
    raise AssertionError(mode)


def _save(tmp_path, image: Image.Image, ext: str) -> str:
    path = tmp_path / f"photo.{ext}"
    image.save(path)
    return str(path)


@pytest.mark.parametrize("mode", ["I;16B", "I", "F", "L", "1", "P", "CMYK"])
def test_every_pixel_mode_becomes_the_8_bit_rgb_picture_it_shows(tmp_path, mode):
    path, expected_mean = _written(tmp_path, mode)
    with Image.open(path) as opened:
        assert opened.mode == mode  # the file really holds that mode
    image = load_photo(path)
    assert image.mode == "RGB" and image.size == (64, 32)
    assert abs(np.asarray(image).astype(float).mean() - expected_mean) < 2.0


# 3. Transparency ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["RGBA", "LA", "P"])
def test_transparent_pixels_are_composited_on_white_with_one_warning_naming_the_case(tmp_path, prepare_one, capsys,
                                                                                     kind):
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = (30, 90, 30) if kind != "LA" else (60, 60, 60), 255
    rgba[:, 40:, 3] = 0  # the right third is transparent (its colour black, as the old loader showed it)
    if kind == "P":  # a palette image whose index 1 is transparent (PNG tRNS)
        image = Image.fromarray((rgba[..., 3] == 0).astype(np.uint8), mode="L").convert("P")
        image.putpalette([30, 90, 30, 0, 0, 0])
        image.save(tmp_path / "cutout.png", transparency=1)
    else:
        Image.fromarray(rgba).convert(kind).save(tmp_path / "cutout.png")
    with Image.open(tmp_path / "cutout.png") as opened:
        assert opened.mode == kind
    record, _ = prepare_one("cutout.png", [5, 5, 30, 30], case_id="cutout")
    prepared = np.asarray(Image.open(record["image"]))
    assert (prepared[:, 40:] == 255).all()  # white, not black
    assert np.abs(prepared[:, :40].astype(int) - (rgba[0, 0, :3] if kind != "LA" else 60)).max() <= 1
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: case 'cutout': image 'cutout.png' has 800 transparent or translucent pixel(s) "
                        f"(33.3%); they are composited on white"]


def test_an_opaque_alpha_channel_is_no_warning(tmp_path, capsys):
    Image.new("RGBA", (20, 10), (1, 2, 3, 255)).save(tmp_path / "opaque.png")
    assert np.asarray(load_photo(tmp_path / "opaque.png", "case 'x'"))[0, 0].tolist() == [1, 2, 3]
    assert not capsys.readouterr().err


# 4. Undecodable files -------------------------------------------------------------------------------------------------


def _truncated_jpeg(path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header says 64x64, half the pixels are missing


@pytest.mark.parametrize("kind, reason", [
    ("truncated", "OSError: image file is truncated ("),  # then "<n> bytes not processed))"
    ("text", "UnidentifiedImageError"),
    ("empty", "ValueError: the file is empty (0 bytes))"),
])
def test_an_undecodable_photo_stops_prepare_with_a_sentence_naming_the_case_and_the_file(tmp_path, prepare_one, capsys,
                                                                                        kind, reason):
    bad = tmp_path / "bad.jpg"
    if kind == "truncated":
        _truncated_jpeg(bad)
    else:
        bad.write_text("this is not a photo\n" if kind == "text" else "")
    with pytest.raises(ConfigError) as e:
        prepare_one("bad.jpg", [0, 0, 10, 10], case_id="broken")
    message = str(e.value)
    assert message.startswith(f"case 'broken': image 'bad.jpg' does not decode as an image ({reason}")
    assert "\n" not in message and message.endswith(")")
    if kind == "truncated":
        assert message.endswith(" bytes not processed))")
    assert not capsys.readouterr().err  # nothing else is printed: the stage's `error:` line will be the only one
    assert not (tmp_path / "out").exists()  # stopped while checking the manifest, before any case was written


def test_a_photo_broken_after_prepare_fails_its_cells_with_the_loaders_sentence(tmp_path):
    (tmp_path / "gone.png").write_bytes(b"truncated")
    with pytest.raises(ConfigError, match=r"does not decode as an image \(UnidentifiedImageError"):
        load_photo(tmp_path / "gone.png")  # generate records this sentence in the cell (tests/test_sweep.py)
