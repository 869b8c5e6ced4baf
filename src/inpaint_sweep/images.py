"""Small image and file helpers shared by the stages: reading photos, fonts, atomic writes."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFont, ImageOps

from .config import ConfigError

BACKGROUND = (255, 255, 255)  # what a photo's transparent pixels are composited on (the model has no alpha channel)
_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # one channel wider than 8 bits


def load_photo(path: str | os.PathLike, where: str | None = None, shown: str | None = None,
               warn: bool = True) -> Image.Image:
    """A photo as a viewer shows it, as 8-bit RGB: the one way every stage reads a photo.

    1. Decoded in full now, so a truncated or non-image file fails here: ConfigError naming `where` (e.g. "case 'x'")
       and the file (`shown`, default the path), which the stages print as one line with exit code 2.
    2. Upright: the EXIF Orientation tag is applied (phones store pictures sideways and set it), so sizes and boxes
       are in the pixels a viewer shows.
    3. 8-bit RGB: 16- and 32-bit grey (I;16, I, F) scaled by their bit depth (0..65535 -> 0..255), never clipped;
       palette, grey, 1-bit, CMYK converted; transparency composited on BACKGROUND (white), saying so in one
       warning line unless `warn` is False.
    """
    prefix = f"{where}: " if where else ""
    shown = str(path) if shown is None else shown
    # 1. Decode (not just the header: a truncated JPEG only fails when its pixels are read).
    try:
        if os.path.getsize(path) == 0:
            raise ValueError("the file is empty (0 bytes)")
        with _pillow_open(path) as opened:
            opened.load()
            image = opened
    except Exception as e:  # noqa: BLE001 - PIL raises many types (and plugins registered by other packages more)
        raise ConfigError(f"{prefix}image {shown!r} does not decode as an image ({type(e).__name__}: "
                          f"{' '.join(str(e).split())})") from None
    bits = _declared_bits(image)  # read before transposing: the transposed copy forgets the file's format and tags
    # 2. Upright. A broken EXIF block must not cost the photo: it is then taken as stored.
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001
        pass
    # 3. 8-bit RGB.
    return _to_rgb8(image, bits, prefix, shown, warn)


def _pillow_open(path):
    """Pillow's own Image.open. Importing Ultralytics (mask.method=yolo/sam) replaces it with a wrapper that, on a file
    Pillow cannot identify, tries to pip-install a HEIF plugin and then fails with "No module named 'pi_heif'"."""
    patches = sys.modules.get("ultralytics.utils.patches")
    return getattr(patches, "_image_open", Image.open)(path)


def _declared_bits(image: Image.Image) -> int | None:
    """Bits per sample the file declares for a mode-I image (a 16-bit PNG, or a TIFF's BitsPerSample)."""
    if image.mode != "I":
        return None
    if image.format == "PNG":
        return 16
    if image.format == "TIFF":
        per_sample = getattr(image, "tag_v2", {}).get(258)
        if per_sample:
            return int(per_sample[0] if isinstance(per_sample, tuple) else per_sample)
    return None


def _to_rgb8(image: Image.Image, bits: int | None, prefix: str, shown: str, warn: bool) -> Image.Image:
    if image.mode in _HIGH_DEPTH:
        values = np.asarray(image).astype(np.float64)
        top = _full_scale(image.mode, values, bits)
        grey = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")  # a palette or colour-key transparency becomes an alpha channel here
        alpha = np.asarray(rgba.getchannel("A"))
        if alpha.min() == 255:
            return rgba.convert("RGB")
        if warn:
            see_through = int((alpha < 255).sum())
            print(f"warning: {prefix}image {shown!r} has {see_through} transparent or translucent pixel(s) "
                  f"({see_through / alpha.size:.1%}); they are composited on white", file=sys.stderr)
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, RGBX, ...
    except ValueError as e:
        raise ConfigError(f"{prefix}image {shown!r} has pixel mode {image.mode}, which cannot be converted to RGB "
                          f"({e})") from None


def _full_scale(mode: str, values: np.ndarray, bits: int | None) -> float:
    """The value that means full brightness in a 16/32-bit grey image: from its bit depth, not from its content."""
    if mode.startswith("I;16"):
        return 65535.0
    if mode == "F":  # floating point: 0..1 by convention; any other range is stretched from 0 to its maximum
        peak = float(values.max(initial=0.0))
        return 1.0 if peak <= 1.0 else peak
    if bits is None:  # mode I without a declared depth: 16 bits if every value fits, else 32 (signed)
        bits = 16 if values.max(initial=0) <= 65535 else 31
    return float(2 ** min(bits, 31) - 1)


@lru_cache(maxsize=None)
def font(size: int) -> ImageFont.ImageFont:
    """Pillow's built-in scalable font: nothing to download, same look everywhere."""
    return ImageFont.load_default(size=size)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Files and folders are created with the user's umask (0644 and 0755 under umask 022), as any tool's would be;
# mkstemp's files are 0600 and mkdtemp's folders 0700.
FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_image(image: Image.Image, path: str | os.PathLike, compress_level: int = 6) -> None:
    """Write a PNG via a temporary file and a rename, so a crash never leaves half an image.

    compress_level 1 writes several times faster than the default 6 for a slightly larger (still lossless) file.
    """
    _atomic(Path(path), lambda tmp: image.save(tmp, format="PNG", compress_level=compress_level))


def write_json(data, path: str | os.PathLike) -> None:
    """Write `data` as indented JSON, atomically; a file that holds that text already is left as it is (its mtime
    too), so a re-run rewrites no unchanged record."""
    text = json.dumps(data, indent=2) + "\n"
    try:
        if Path(path).read_text() == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def mask_outline(mask: np.ndarray, width: int = 1) -> Image.Image:
    """A boolean mask's edge, `width` pixels wide inside it, in yellow on a transparent RGBA image (drawn over the
    pictures of the report and the review app)."""
    import cv2

    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    inner = cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    pixels = np.zeros((*mask.shape, 4), np.uint8)
    pixels[mask & ~inner] = (255, 230, 0, 255)
    return Image.fromarray(pixels, "RGBA")


def to_mask_image(mask: np.ndarray) -> Image.Image:
    """A boolean mask as an 8-bit PNG-ready image: 255 inside, 0 outside."""
    return Image.fromarray(mask.astype(np.uint8) * 255, mode="L")


def preview(source: Path, folder: Path, image_format: str, max_pixels: int | None,
            decoded: Image.Image | None = None) -> str:
    """A copy of the picture `source` for Comet: `image_format`, at most `max_pixels` pixels (aspect kept).
    `decoded`: the picture already in memory (a computed cell's), so the file need not be decoded again."""
    if image_format == "png" and not max_pixels:
        return str(source)
    image = decoded
    if image is None:
        with Image.open(source) as opened:
            image = opened.copy()
    if max_pixels and image.width * image.height > max_pixels:
        scale = (max_pixels / (image.width * image.height)) ** 0.5
        image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))),
                             Image.Resampling.LANCZOS)
    target = folder / f"{source.stem}.{'jpg' if image_format == 'jpeg' else image_format}"
    if image_format == "jpeg" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    image.save(target, format=image_format.upper(), quality=90, method=0)  # method: WebP's fastest
    return str(target)
