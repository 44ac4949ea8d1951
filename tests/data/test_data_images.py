"""Image loading: what is fixed (and how the result looks), what is refused (and why)."""

import functools
import http.server
import io
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

from mmlora.config.schema import ModelConfig
from mmlora.data.images import inspect_image, load_image, resolve_image
from mmlora.data.samples import RowError
from mmlora.data.scan import load_data_processor
from mmlora.data.splitscan import VisualTokenCounter
from mmlora.errors import MmloraError


@pytest.fixture(scope="module")
def processor():
    return load_data_processor(ModelConfig(name="tiny/qwen2-vl", max_pixels=224 * 224))


def png_with_header_size(path, width: int, height: int) -> None:
    """A valid 1x1 PNG whose IHDR claims width x height (a decompression bomb's header)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    start = data.index(b"IHDR")
    data[start + 4: start + 12] = struct.pack(">II", width, height)
    data[start + 17: start + 21] = struct.pack(">I", zlib.crc32(bytes(data[start: start + 17])))
    path.write_bytes(bytes(data))


def refused(ref, reason: str, decode: bool = True) -> str:
    with pytest.raises(RowError) as info:
        inspect_image(ref, decode=decode)
    assert info.value.reason == reason, info.value
    with pytest.raises(MmloraError, match="where.png"):
        load_image(ref, where="where.png")
    return str(info.value)


# --- fixed: these load, and the result is checked ---------------------------------------------

def test_exif_rotation_is_applied(tmp_path):
    picture = Image.new("RGB", (40, 20), "red")
    picture.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    picture.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    loaded = load_image(tmp_path / "rotated.jpg")
    assert loaded.size == (20, 40)
    assert inspect_image(tmp_path / "rotated.jpg").width == 20  # the scan sees the rotated size
    top, bottom = loaded.getpixel((10, 5)), loaded.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60, top  # the left (red) half turned to the top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_rgba_and_palette_transparency_are_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (255, 0, 0, 128))
    rgba.save(tmp_path / "rgba.png")
    loaded = load_image(tmp_path / "rgba.png")
    assert loaded.mode == "RGB"
    assert loaded.getpixel((5, 5)) == (255, 255, 255)  # transparent -> white, not black
    assert loaded.getpixel((0, 0)) == (255, 0, 0)
    assert loaded.getpixel((1, 0)) == (255, 127, 127)  # half-transparent red over white
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((3, 3), 1)
    palette.save(tmp_path / "palette.png", transparency=0)
    loaded = load_image(tmp_path / "palette.png")
    assert loaded.getpixel((0, 0)) == (255, 255, 255) and loaded.getpixel((3, 3)) == (0, 255, 0)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    red = load_image(tmp_path / "cmyk.jpg").getpixel((8, 8))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60, red


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 128 * 257], [65535, 64 * 257]], dtype=np.uint16).repeat(8, 0).repeat(8, 1)
    Image.fromarray(values).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    loaded = load_image(tmp_path / "gray16.png")
    assert loaded.mode == "RGB"
    assert [loaded.getpixel(xy)[0] for xy in ((0, 0), (8, 0), (0, 8), (8, 8))] == [0, 128, 255, 64]


def test_png_with_jpg_extension_loads(tmp_path):
    Image.new("RGB", (12, 10), (10, 200, 30)).save(tmp_path / "really_a_png.jpg", format="PNG")
    assert load_image(tmp_path / "really_a_png.jpg").getpixel((3, 3)) == (10, 200, 30)


def test_extreme_aspect_ratio_is_padded_on_white_and_counted_right(tmp_path, processor):
    Image.new("RGB", (1, 400), (0, 0, 0)).save(tmp_path / "strip.png")
    info = inspect_image(tmp_path / "strip.png")
    loaded = load_image(tmp_path / "strip.png")
    assert (info.width, info.height, info.padded) == (2, 400, True) and loaded.size == (2, 400)
    assert sorted({loaded.getpixel((0, y)) for y in range(400)} | {loaded.getpixel((1, y)) for y in range(400)}) \
        == [(0, 0, 0), (255, 255, 255)]
    # the processor (which refuses > 200:1) takes it, with the token count the scan predicts
    encoded = processor.encode(processor.family.image_token, [loaded])
    assert encoded.image_token_counts == [VisualTokenCounter(processor)(info.width, info.height)]


def test_scan_token_count_matches_the_processor(processor):
    counter = VisualTokenCounter(processor)
    assert counter.fast  # Qwen2-VL's resize rule is used without touching pixels
    for size in [(8, 8), (28, 28), (112, 168), (333, 97), (1000, 30), (2000, 1500), (5, 900)]:
        real = processor.encode(processor.family.image_token, [Image.new("RGB", size)])
        assert counter(*size) == real.image_token_counts[0], size


# --- refused: each with its reason ------------------------------------------------------------

def test_refusals_name_their_reason(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not an image\n")
    noise = io.BytesIO()
    Image.effect_noise((128, 128), 60).convert("RGB").save(noise, "JPEG")
    (tmp_path / "truncated.jpg").write_bytes(noise.getvalue()[: len(noise.getvalue()) // 2])
    Image.new("RGB", (1, 1)).save(tmp_path / "tiny.png")
    png_with_header_size(tmp_path / "bomb.png", 20_000, 20_000)
    png_with_header_size(tmp_path / "bomb_warning_zone.png", 10_000, 10_000)  # between 1x and 2x the limit

    assert "empty" in refused(tmp_path / "zero.jpg", "empty_image_file")
    assert "not an image" in refused(tmp_path / "text.jpg", "not_an_image")
    assert "truncated" in refused(tmp_path / "truncated.jpg", "corrupt_image")
    assert "1x1" in refused(tmp_path / "tiny.png", "image_too_small")
    refused(tmp_path / "bomb.png", "image_too_large")
    refused(tmp_path / "bomb_warning_zone.png", "image_too_large")
    refused(b"", "empty_image_file")
    # header-only checks trade the truncation check for speed; everything else still holds
    assert inspect_image(tmp_path / "truncated.jpg", decode=False).width == 128
    refused(tmp_path / "text.jpg", "not_an_image", decode=False)


def test_paths_outside_the_root_and_urls_are_refused_unless_allowed(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    Image.new("RGB", (10, 10)).save(tmp_path / "outside.png")
    Image.new("RGB", (10, 10)).save(root / "inside.png")
    assert resolve_image("inside.png", root) == root / "inside.png"
    assert resolve_image("./sub/../inside.png", root) == root / "inside.png"
    for escaping in ("../outside.png", str(tmp_path / "outside.png")):
        with pytest.raises(RowError) as info:
            resolve_image(escaping, root)
        assert info.value.reason == "image_outside_root"
        assert resolve_image(escaping, root, allow_outside_root=True) == tmp_path / "outside.png"
    with pytest.raises(RowError) as info:
        resolve_image("missing.png", root)
    assert info.value.reason == "missing_image"
    with pytest.raises(RowError) as info:
        resolve_image("https://example.com/cat.jpg", root)
    assert info.value.reason == "url_not_allowed" and "data.allow_urls" in str(info.value)


def test_allowed_urls_are_fetched_once_into_the_cache(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    Image.new("RGB", (20, 10), (1, 2, 3)).save(served / "pic.png")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/pic.png"
        ref = resolve_image(url, tmp_path, allow_urls=True)
        assert inspect_image(ref).width == 20
        assert load_image(ref).getpixel((0, 0)) == (1, 2, 3)
        assert len(list((tmp_path / "cache" / "mmlora" / "images").iterdir())) == 1
        with pytest.raises(RowError) as info:
            inspect_image(resolve_image(url.replace("pic", "gone"), tmp_path, allow_urls=True))
        assert info.value.reason == "url_failed"
    finally:
        server.shutdown()


def test_bytes_pil_and_data_uri_references(tmp_path):
    import base64

    buffer = io.BytesIO()
    Image.new("RGB", (9, 9), (7, 8, 9)).save(buffer, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    for ref in (buffer.getvalue(), {"bytes": buffer.getvalue(), "path": None}, uri,
                Image.new("RGBA", (9, 9), (7, 8, 9, 255))):
        assert load_image(resolve_image(ref, tmp_path)).getpixel((4, 4)) == (7, 8, 9)
