"""quality: the weight-free metrics order synthetic fills the way a person would — a hard paste of a flat colour is
worse than a feathered copy of the surroundings on every metric; outside the mask, exact means exact."""

import cv2
import numpy as np
import pytest

from inpaint_sweep.quality import PSNR_IDENTICAL, edge_delta_e, image_quality, mask_geometry, seam, texture_ratio


@pytest.fixture(scope="module")
def scene():
    """A 160 x 160 textured photo (soft colour gradient + fine noise), a 60 x 60 mask in the middle, and fills."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:160, 0:160]
    base = np.stack([90 + x * 0.3, 110 + y * 0.2, 120 + (x - y) * 0.1], axis=-1)
    photo = np.clip(base + rng.normal(0, 14, base.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((160, 160), bool)
    mask[50:110, 50:110] = True
    soft = cv2.GaussianBlur(cv2.erode(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(np.float32),
                            (0, 0), 3)[..., None] * mask[..., None]
    source = np.roll(photo, 62, axis=1)  # texture from beside the mask, same rows
    fills = {
        "flat": np.where(mask[..., None], np.array([200, 30, 30], np.uint8), photo),
        "copy": (photo * (1 - soft) + source * soft).round().astype(np.uint8),
        "blur": np.where(mask[..., None], cv2.GaussianBlur(photo, (0, 0), 4), photo),
    }
    return photo, mask_geometry(mask), fills


def test_hard_flat_paste_scores_worse_than_a_feathered_copy_on_every_metric(scene):
    photo, geom, fills = scene
    flat, copy = (image_quality(fills[k], photo, geom) for k in ("flat", "copy"))
    assert flat["seam"] > 3 * copy["seam"] and copy["seam"] < 1.5  # a step at the edge vs the photo's own change
    assert flat["edge_delta_e"] > 20 > 5 > copy["edge_delta_e"]  # red against grey-blue vs like against like
    assert flat["texture_ratio"] < 0.05 and 0.7 < copy["texture_ratio"] < 1.3  # no detail vs as detailed as around
    for q in (flat, copy):  # both paste the photo back outside the mask: exact, by design
        assert q["outside_psnr"] == PSNR_IDENTICAL and q["outside_ssim"] == 1.0


def test_blurry_fill_in_a_sharp_photo_loses_texture(scene):
    photo, geom, fills = scene
    assert texture_ratio(fills["blur"], geom) < 0.5 * texture_ratio(fills["copy"], geom)


def test_the_photo_itself_has_no_seam_and_matching_colours(scene):
    photo, geom, _ = scene
    assert seam(photo, photo, geom) == pytest.approx(1.0, abs=1e-3)
    assert edge_delta_e(photo, geom) < 3 and 0.8 < texture_ratio(photo, geom) < 1.2


def test_any_change_outside_the_mask_shows_in_psnr_and_ssim(scene):
    photo, geom, fills = scene
    leaked = fills["copy"].copy()
    leaked[:20, :20] = 255 - leaked[:20, :20]
    q = image_quality(leaked, photo, geom)
    assert q["outside_psnr"] < 35 and q["outside_ssim"] < 0.99
    slight = fills["copy"].astype(int)
    slight[~geom.mask] += 1
    q = image_quality(np.clip(slight, 0, 255).astype(np.uint8), photo, geom)
    assert 45 < q["outside_psnr"] < PSNR_IDENTICAL and 0.99 < q["outside_ssim"] < 1.0


def test_sizes_that_differ_are_refused(scene):
    photo, geom, _ = scene
    with pytest.raises(ValueError, match="differ in size"):
        image_quality(photo[:100], photo, geom)
