"""Weight-free inpainting metrics on numpy arrays: is there a seam at the mask's edge, do the colours match across it,
does the fill have the photo's texture, and is everything outside the mask preserved.

All take the saved full-size image and the photo as (H, W, 3) uint8 arrays and a `MaskGeometry` (the mask's rings,
computed once per mask). The local metrics work on the crop around the mask only, so they cost the same on a 20 MP
photo as on a small one. Colour science is scikit-image's (rgb2lab, deltaE_ciede2000); filters are OpenCV's.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.metrics import structural_similarity

BAND = 3  # pixels either side of the mask's edge: the seam band and the colour rings
TEXTURE_RING = 12  # pixels: the ring outside the mask whose texture the fill should match
TILE = 16  # colour is compared per TILE x TILE patch of the edge, so a mask across sky and road compares like with like
HF_SIGMA = 1.5  # high frequencies: the image minus its Gaussian blur at this sigma
SSIM_WINDOW = 7  # skimage's default window: SSIM outside the mask skips pixels whose window reaches into it
PSNR_IDENTICAL = 100.0  # dB written for identical pixels (PSNR is infinite there; JSON and DVC want a number)
EPS = 1e-6

QUALITY_METRICS = ("seam", "edge_delta_e", "texture_ratio", "outside_psnr", "outside_ssim")


@dataclass
class MaskGeometry:
    """Where each metric looks, as boolean arrays over the crop `box` (y0, y1, x0, x1) around the mask."""

    box: tuple[int, int, int, int]
    mask_box: tuple[int, int, int, int]  # (y0, y1, x0, x1) of the mask itself
    mask: np.ndarray  # (H, W) the whole mask: outside-the-mask metrics use it at full size
    inner: np.ndarray  # inside the mask, within BAND of its edge
    outer: np.ndarray  # outside the mask, within BAND of its edge
    interior: np.ndarray  # inside the mask, further than BAND from its edge
    texture_ring: np.ndarray  # outside the mask, within TEXTURE_RING of its edge
    normal: np.ndarray  # (2, h, w) unit vector across the edge (y, x), in the band
    far_outside: np.ndarray  # (H, W) outside the mask by more than half an SSIM window


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def mask_geometry(mask: np.ndarray) -> MaskGeometry:
    """The rings and band of a boolean mask (photo size). An empty mask has empty rings (metrics are then NaN)."""
    mask = np.asarray(mask, bool)
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    margin = TEXTURE_RING + 2 * BAND
    if len(ys):
        box = (max(0, ys.min() - margin), min(h, ys.max() + margin + 1),
               max(0, xs.min() - margin), min(w, xs.max() + margin + 1))
        mask_box = (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)
    else:
        box = mask_box = (0, 0, 0, 0)
    y0, y1, x0, x1 = box
    m = mask[y0:y1, x0:x1].astype(np.uint8)
    eroded = cv2.erode(m, _disk(BAND), borderType=cv2.BORDER_REPLICATE).astype(bool)
    dilated = cv2.dilate(m, _disk(BAND)).astype(bool)
    crop = m.astype(bool)
    blurred = cv2.GaussianBlur(m.astype(np.float32), (0, 0), BAND) if m.size else m.astype(np.float32)
    gy, gx = np.gradient(blurred) if min(m.shape, default=0) > 1 else (blurred, blurred)
    norm = np.hypot(gy, gx) + EPS
    far = ~cv2.dilate(mask.astype(np.uint8), _disk(SSIM_WINDOW // 2)).astype(bool)
    return MaskGeometry(
        box=box, mask_box=mask_box, mask=mask, inner=crop & ~eroded, outer=dilated & ~crop, interior=eroded,
        texture_ring=cv2.dilate(m, _disk(TEXTURE_RING)).astype(bool) & ~crop,
        normal=np.stack([gy / norm, gx / norm]), far_outside=far,
    )


def _crop(image: np.ndarray, geom: MaskGeometry) -> np.ndarray:
    y0, y1, x0, x1 = geom.box
    return image[y0:y1, x0:x1]


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0


def seam(image: np.ndarray, photo: np.ndarray, geom: MaskGeometry) -> float:
    """Gradient energy across the mask's edge (in the band BAND pixels either side of it) in the image, relative to
    the photo's own: sqrt(mean((grad . n)^2) of the image / the same of the photo). 1 = as much change across the
    edge as the photo had there; a hard paste of a flat patch is a step, far above 1."""
    band = geom.inner | geom.outer
    if not band.any():
        return float("nan")

    def across(rgb):
        g = _gray(_crop(rgb, geom))
        gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3) / 8
        gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3) / 8
        return float(np.mean((gy * geom.normal[0] + gx * geom.normal[1])[band] ** 2))

    return float(np.sqrt(across(image) / max(across(photo), 1e-12)))


def edge_delta_e(image: np.ndarray, geom: MaskGeometry) -> float:
    """Colour match at the edge: CIEDE2000 between the mean Lab colour of the inner ring (just inside the mask) and
    that of the outer ring (just outside), per TILE-pixel patch of the edge, averaged weighted by ring pixels (the mean
    colour is taken in sRGB, then converted).
    About 1 is a just-noticeable difference; a flat patch of another colour scores its distance to the photo."""
    crop = _crop(image, geom)
    ys, xs = np.nonzero(geom.inner | geom.outer)
    if not len(ys):
        return float("nan")
    rgb = crop[ys, xs].astype(np.float64) / 255.0
    tiles_x = crop.shape[1] // TILE + 1
    tile = (ys // TILE) * tiles_x + xs // TILE
    inside = geom.inner[ys, xs]
    n_tiles = int(tile.max()) + 1
    sums, counts = [], []
    for side in (inside, ~inside):
        counts.append(np.bincount(tile[side], minlength=n_tiles).astype(float))
        sums.append(np.stack([np.bincount(tile[side], rgb[side, c], minlength=n_tiles) for c in range(3)], axis=1))
    both = (counts[0] >= 4) & (counts[1] >= 4)
    if not both.any():
        return float("nan")
    # Each ring's mean colour per patch (the colour an eye averages there), then Lab and CIEDE2000 by scikit-image.
    labs = [rgb2lab((s[both] / c[both, None])[:, None, :])[:, 0, :] for s, c in zip(sums, counts)]
    weights = np.minimum(counts[0], counts[1])[both]
    return float(np.average(deltaE_ciede2000(labs[0], labs[1]), weights=weights))


def texture_ratio(image: np.ndarray, geom: MaskGeometry) -> float:
    """Texture/sharpness match: RMS high-frequency energy (image minus its Gaussian blur) inside the mask (away from
    its edge) over that in the TEXTURE_RING pixels outside it. 1 = as detailed as its surroundings; a flat or blurry
    fill in a sharp photo is near 0; noise is far above 1."""
    if not geom.interior.any() or not geom.texture_ring.any():
        return float("nan")
    g = _gray(_crop(image, geom))
    hf = (g - cv2.GaussianBlur(g, (0, 0), HF_SIGMA)) ** 2
    return float(np.sqrt(hf[geom.interior].mean() / max(hf[geom.texture_ring].mean(), 1e-12)))


def outside_preservation(image: np.ndarray, photo: np.ndarray, geom: MaskGeometry) -> tuple[float, float]:
    """(PSNR in dB, SSIM) of the image against the photo outside the mask. Generate pastes the photo back there, so
    this is exact (PSNR_IDENTICAL, 1.0) by design: anything less is a regression. SSIM averages skimage's SSIM map
    over the pixels whose window lies wholly outside the mask."""
    outside = ~geom.mask
    if _same_outside(image, photo, geom):
        return PSNR_IDENTICAL, 1.0
    err = (image[outside].astype(np.float64) - photo[outside]) ** 2
    psnr = min(PSNR_IDENTICAL, float(10 * np.log10(255.0**2 / max(err.mean(), 1e-12))))
    _, ssim_map = structural_similarity(image, photo, channel_axis=2, data_range=255, full=True,
                                        win_size=SSIM_WINDOW)
    far = geom.far_outside
    ssim = float(ssim_map.mean(axis=2)[far].mean()) if far.any() else float("nan")
    return psnr, ssim


def _same_outside(image: np.ndarray, photo: np.ndarray, geom: MaskGeometry) -> bool:
    """Every pixel outside the mask equal: whole strips around the mask's box compared as memory (fast), the box
    itself pixel by pixel outside the mask."""
    y0, y1, x0, x1 = geom.mask_box
    strips = (np.s_[:y0], np.s_[y1:], np.s_[y0:y1, :x0], np.s_[y0:y1, x1:])
    if not all(np.array_equal(image[s], photo[s]) for s in strips):
        return False
    box = np.s_[y0:y1, x0:x1]
    return not np.any((image[box] != photo[box]) & ~geom.mask[box][..., None])


def image_quality(image: np.ndarray, photo: np.ndarray, geom: MaskGeometry) -> dict[str, float]:
    """Every metric of this module for one image (keys: QUALITY_METRICS)."""
    if image.shape != photo.shape or image.shape[:2] != geom.mask.shape:
        raise ValueError(f"image {image.shape}, photo {photo.shape} and mask {geom.mask.shape} differ in size")
    psnr, ssim = outside_preservation(image, photo, geom)
    return {"seam": seam(image, photo, geom), "edge_delta_e": edge_delta_e(image, geom),
            "texture_ratio": texture_ratio(image, geom), "outside_psnr": psnr, "outside_ssim": ssim}
