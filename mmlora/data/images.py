"""Safe image loading: where a reference may point, what is refused, and what is fixed.

Refused (a RowError with a reason): paths that leave the image root, URLs unless allowed,
missing or empty files, files Pillow cannot identify, truncated or corrupt data, images whose
longer side is under MIN_IMAGE_SIDE px, and images above Pillow's decompression-bomb limit
(`Image.MAX_IMAGE_PIXELS`, checked on the header before any pixel is decoded).

Fixed (loaded correctly, not counted as bad): EXIF orientation is applied; every mode becomes
RGB (16-bit and float greys are scaled, not clipped to white; transparency is composited on
white; CMYK, palette, 1-bit converted); a wrong file extension does not matter (Pillow reads
the content); images with an aspect ratio beyond MAX_ASPECT_RATIO are padded with white on
their short side to that ratio, which Qwen2-VL's resize rule rejects beyond 200:1.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import os
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from mmlora.data.pathkinds import DANGLING_LINK, INVALID, MISSING, PathProblem, not_a_file
from mmlora.data.samples import RowError

MIN_IMAGE_SIDE = 8
MAX_ASPECT_RATIO = 200
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageInfo:
    """What the pre-scan learns from an image without keeping its pixels."""

    width: int
    """Width the processor will see: after EXIF rotation and aspect-ratio padding."""
    height: int
    padded: bool


def resolve_image(ref, root: Path, allow_outside_root: bool = False, allow_urls: bool = False):
    """A row's image reference -> a checked Path, URL string, bytes or PIL image."""
    from PIL import Image

    if isinstance(ref, Image.Image):
        return ref
    if isinstance(ref, (bytes, bytearray)):
        return bytes(ref)
    if isinstance(ref, dict):  # `datasets` Image storage: {"bytes": ..., "path": ...}
        if ref.get("bytes"):
            return bytes(ref["bytes"])
        return resolve_image(ref.get("path") or "", root, allow_outside_root, allow_urls)
    if not isinstance(ref, (str, Path)):
        raise RowError("bad_row", f"an image must be a path, URL or image, got {type(ref).__name__}")
    text = str(ref).strip()
    if not text:
        raise RowError("bad_row", "an image path is empty")
    if text.startswith("data:"):
        return _data_uri_bytes(text)
    if "://" in text:
        if not text.startswith(("http://", "https://")):
            raise RowError("bad_row", f"image '{text[:80]}': only http(s) URLs and local paths are supported")
        if not allow_urls:
            raise RowError("url_not_allowed", f"image '{text[:80]}' is a URL; set data.allow_urls=true to fetch it")
        return text
    path = Path(os.path.abspath(root / Path(text).expanduser()))
    # Lexical check (no symlink resolution): `../` and foreign absolute paths are refused,
    # while a symlinked folder inside the root, set up by whoever owns the data, still works.
    if not allow_outside_root and not path.is_relative_to(os.path.abspath(root)):
        raise RowError("image_outside_root", f"image '{text}' is outside the image root {root} "
                                             "(set data.allow_outside_root=true to allow it)")
    if not_a_file(path):  # not Path.is_file(): it raises for a name too long for the file system
        raise _not_a_file_error(f"image '{text}'", path, f" (looked at {path})")
    return path


def _not_a_file_error(described: str, path: Path, suffix: str = "") -> RowError:
    """missing_image for a path that does not exist, image_not_a_file for a folder, pipe or loop."""
    problem = not_a_file(path) or PathProblem(MISSING, "does not exist")  # gone since the caller looked
    if problem.kind == MISSING:
        return RowError("missing_image", f"{described} not found{suffix}")
    if problem.kind == INVALID:
        return RowError("bad_row", f"{described[:120]} {problem}")
    reason = "missing_image" if problem.kind == DANGLING_LINK else "image_not_a_file"
    return RowError(reason, f"{described} {problem}{suffix}")


def _data_uri_bytes(uri: str) -> bytes:
    header, _, payload = uri.partition(",")
    if not header.endswith(";base64"):
        raise RowError("not_an_image", "a data: URI image must be base64-encoded")
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as err:
        raise RowError("not_an_image", f"a data: URI image is not valid base64 ({err})") from None


def fetch_url(url: str) -> Path:
    """Download an image URL once into the user cache (~/.cache/mmlora/images) and return the file."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "mmlora" / "images"
    target = cache / hashlib.sha256(url.encode()).hexdigest()
    if target.is_file():
        return target
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read(MAX_DOWNLOAD_BYTES + 1)
    except (OSError, ValueError) as err:
        raise RowError("url_failed", f"image URL '{url[:80]}' could not be fetched ({err})") from None
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise RowError("url_failed", f"image URL '{url[:80]}' is larger than {MAX_DOWNLOAD_BYTES >> 20} MiB")
    cache.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.part")
    partial.write_bytes(data)
    partial.replace(target)  # atomic: a concurrent reader never sees half a file
    return target


def _describe(ref) -> str:
    if isinstance(ref, (bytes, bytearray)):
        return f"<{len(ref)} bytes>"
    return f"'{ref}'" if isinstance(ref, (str, Path)) else "<in-memory image>"


def _open(ref):
    """Open (lazily, pixels not decoded) a resolved reference; RowError for what is not an image."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(ref, Image.Image):
        return ref
    if isinstance(ref, str) and ref.startswith(("http://", "https://")):
        ref = fetch_url(ref)
    if isinstance(ref, (str, Path)):
        if not_a_file(Path(ref)):
            raise _not_a_file_error(f"image {_describe(ref)}", Path(ref))
        if Path(ref).stat().st_size == 0:
            raise RowError("empty_image_file", f"cannot read image {_describe(ref)}: the file is empty (0 bytes)")
    elif not ref:
        raise RowError("empty_image_file", "cannot read image: it is empty (0 bytes)")
    source = io.BytesIO(ref) if isinstance(ref, (bytes, bytearray)) else ref
    with warnings.catch_warnings():
        # Pillow only warns between 1x and 2x its pixel limit; refuse those too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(source)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise RowError("image_too_large", f"image {_describe(ref)} refused: {err}") from None
        except UnidentifiedImageError:
            raise RowError("not_an_image", f"cannot read image {_describe(ref)}: not an image file "
                                           "(unrecognised content)") from None
        except Exception as err:  # noqa: BLE001 - image plugins raise many types on bad headers
            raise RowError("corrupt_image", f"cannot read image {_describe(ref)}: corrupt header ({err})") from None


def oriented_size(picture) -> tuple[int, int]:
    """(width, height) after the EXIF orientation is applied, read from the header only."""
    width, height = picture.size
    try:
        orientation = picture.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block means: no rotation
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def checked_size(width: int, height: int, ref=None) -> tuple[tuple[int, int], bool]:
    """The size the processor will get (after padding extreme aspect ratios), and whether padded."""
    from PIL import Image

    if max(width, height) < MIN_IMAGE_SIDE:
        raise RowError("image_too_small", f"image {_describe(ref)} is {width}x{height} px; images under "
                                          f"{MIN_IMAGE_SIDE} px on their longer side are refused")
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise RowError("image_too_large", f"image {_describe(ref)} is {width}x{height} px, above the "
                                          f"decompression-bomb limit of {limit} px")
    long_side, short_side = max(width, height), min(width, height)
    if long_side / short_side <= MAX_ASPECT_RATIO:
        return (width, height), False
    short_side = math.ceil(long_side / MAX_ASPECT_RATIO)
    return ((long_side, short_side) if width >= height else (short_side, long_side)), True


def inspect_image(ref, decode: bool = True) -> ImageInfo:
    """Check an image as training will load it; decode=False reads only the header (faster,
    but truncated data is then only found when training reaches the image)."""
    picture = _open(ref)
    try:
        (width, height), padded = checked_size(*oriented_size(picture), ref)
        if decode:
            if picture.format == "JPEG":
                # DCT-domain downscaling: still reads every byte (so truncation is caught),
                # at a fraction of the cost of a full-size decode.
                picture.draft(picture.mode, (1, 1))
            try:
                picture.load()
            except Exception as err:  # noqa: BLE001 - decoders raise many types on bad data
                raise RowError("corrupt_image", f"cannot read image {_describe(ref)}: truncated or "
                                                f"corrupt ({err})") from None
    finally:
        if picture is not ref:
            picture.close()
    return ImageInfo(width, height, padded)


def load_image(ref, where: str = "image"):
    """An RGB PIL image, with every fix applied; MmloraError (a RowError) naming `where` if not."""
    from PIL import Image

    try:
        picture = _open(ref)
        try:
            (width, height), padded = checked_size(*oriented_size(picture), ref)
            try:
                picture.load()
            except Exception as err:  # noqa: BLE001 - decoders raise many types on bad data
                raise RowError("corrupt_image", f"cannot read image {_describe(ref)}: truncated or "
                                                f"corrupt ({err})") from None
            rgb = to_rgb(picture)
        finally:
            if picture is not ref:
                picture.close()
    except RowError as err:
        raise err.at(where) from None
    if padded:
        canvas = Image.new("RGB", (width, height), (255, 255, 255))
        canvas.paste(rgb, ((width - rgb.width) // 2, (height - rgb.height) // 2))
        rgb = canvas
    return rgb


def to_rgb(picture):
    """EXIF orientation applied, then any mode -> RGB (alpha composited on white)."""
    import numpy as np
    from PIL import Image, ImageOps

    picture = ImageOps.exif_transpose(picture)
    if picture.mode.startswith("I") or picture.mode == "F":
        values = np.asarray(picture, dtype=np.float64)
        if picture.mode == "F" and values.max(initial=0) <= 1.0:
            values = values * 255.0  # float images in [0, 1]
        elif picture.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0  # 16-bit range onto 8 bits (65535 -> 255)
        picture = Image.fromarray(np.clip(values.round(), 0, 255).astype(np.uint8), "L")
    has_alpha = picture.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in picture.info
    if has_alpha:
        rgba = picture.convert("RGBA")
        picture = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return picture.convert("RGB")
