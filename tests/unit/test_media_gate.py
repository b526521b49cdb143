"""The media gate (r1rm.data.media.admit_image): what it refuses, with which reason, before decoding; what it
converts, to which pixels; and that every path (records, trainers' encoder, endpoint wire format) uses it."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from r1rm.data.files import RowError
from r1rm.data.media import (
    MAX_DECODED_PIXELS,
    admit_image,
    check_image,
    fit_visuals,
    image_header,
    open_rgb,
    pixel_bound,
)
from r1rm.data.records import check_record_media, parse_record
from r1rm.errors import InputFileError


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def header_only_png(w: int, h: int) -> bytes:
    """A PNG that claims w x h pixels and holds none: decoding it would fail as truncated, so a refusal
    for its size proves the gate judged the header before decoding."""
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + _chunk(b"IEND", b"")


def reason(source, **kw) -> str:
    with pytest.raises(RowError) as e:
        admit_image(source, max_pixels=kw.pop("max_pixels", None), **kw)
    return e.value.reason


def test_bound_is_64_times_max_pixels_capped_by_pils_own():
    assert pixel_bound(1) == 64 and pixel_bound(12544) == 802816
    assert pixel_bound(None) == MAX_DECODED_PIXELS == pixel_bound(10**9)


def test_size_refused_from_the_header_before_decoding():
    assert reason(header_only_png(9, 8), max_pixels=1) == "image_too_large"  # 72 > 64
    assert reason(header_only_png(12000, 12000)) == "image_too_large"  # no budget: PIL's own bound
    assert reason(header_only_png(8, 8), max_pixels=1) == "corrupt_image"  # within the bound: decoded, and it has no pixels
    with pytest.raises(RowError, match=r"12000x12000 .*\(64 x max_pixels=12544\)"):
        admit_image(header_only_png(12000, 12000), max_pixels=12544, what="x.png")


def test_pils_settings_are_guarded(tmp_path):
    from PIL import ImageFile

    noisy = Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    noisy.save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:2000])
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = None, True  # what a careless library does
    try:
        assert reason(header_only_png(12000, 12000)) == "image_too_large"
        assert reason(tmp_path / "cut.png") == "corrupt_image"
        assert Image.MAX_IMAGE_PIXELS == MAX_DECODED_PIXELS and ImageFile.LOAD_TRUNCATED_IMAGES is False
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = MAX_DECODED_PIXELS, False


def test_aspect_ratio_above_200_refused_with_its_own_reason():
    assert admit_image(Image.new("RGB", (200, 1)), max_pixels=None).size == (200, 1)
    assert reason(Image.new("RGB", (201, 1))) == "aspect_ratio"
    buf = io.BytesIO()
    Image.new("RGB", (2, 600)).save(buf, format="PNG")
    with pytest.raises(RowError, match="aspect ratio 300 exceeds 200"):
        admit_image(buf.getvalue(), max_pixels=None)


def test_broken_files_missing_empty_and_other_formats(tmp_path):
    assert reason(tmp_path / "nope.png") == "missing_image"
    (tmp_path / "empty.png").write_bytes(b"")
    assert reason(tmp_path / "empty.png") == "empty_image"
    (tmp_path / "text.png").write_text("not an image")
    assert reason(tmp_path / "text.png") == "corrupt_image"
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    noisy.save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:2000])
    with pytest.raises(RowError, match="truncated") as e:
        admit_image(tmp_path / "cut.png", max_pixels=None)
    assert e.value.reason == "corrupt_image"
    assert image_header(tmp_path / "cut.png", max_pixels=None)[2] == (64, 64)  # the header alone is fine
    Image.new("RGB", (16, 16)).save(tmp_path / "a.ppm")  # a format PIL reads but r1rm does not take
    with pytest.raises(RowError, match="not a PNG, JPEG, WebP, GIF, BMP or TIFF image"):
        admit_image(tmp_path / "a.ppm", max_pixels=None)
    assert reason("data:image/png;base64,@@@") == "corrupt_image"


def _saved(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "PNG", "WEBP", "GIF"])
def test_every_format_decodes_to_the_same_rgb(fmt):
    img = Image.new("RGB", (30, 20), (10, 120, 250))
    out = admit_image(_saved(img, fmt, **({"lossless": True} if fmt == "WEBP" else {})), max_pixels=None)
    assert out.mode == "RGB" and out.size == (30, 20)
    if fmt != "GIF":  # GIF quantises to a palette
        assert out.getpixel((5, 5)) == (10, 120, 250)


def test_modes_are_converted_to_8_bit_rgb():
    g16 = admit_image(_saved(Image.fromarray(np.full((4, 4), 257 * 100, dtype=np.uint16)), "PNG"), max_pixels=None)
    assert g16.mode == "RGB" and g16.getpixel((0, 0)) == (100, 100, 100)  # scaled, not clipped to white
    cmyk = admit_image(_saved(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100), max_pixels=None)
    assert cmyk.mode == "RGB" and cmyk.getpixel((4, 4))[0] > 200 and cmyk.getpixel((4, 4))[1] < 50
    la = admit_image(_saved(Image.new("LA", (4, 4), (77, 255)), "PNG"), max_pixels=None)
    assert la.getpixel((0, 0)) == (77, 77, 77)
    bits = admit_image(_saved(Image.new("1", (4, 4), 1), "PNG"), max_pixels=None)
    assert bits.getpixel((0, 0)) == (255, 255, 255)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (10, 10), c).convert("P") for c in ((250, 0, 0), (0, 0, 250))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    r, g, b = admit_image(buf.getvalue(), max_pixels=None).getpixel((0, 0))
    assert r > 200 and b < 50


def test_sources_path_bytes_data_url_and_pil_agree(tmp_path):
    img = Image.new("RGB", (12, 9), (1, 2, 3))
    data = _saved(img, "PNG")
    (tmp_path / "a.png").write_bytes(data)
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    outs = [admit_image(s, max_pixels=100) for s in (tmp_path / "a.png", str(tmp_path / "a.png"), data, url, img)]
    assert all(o.size == (12, 9) and o.getpixel((3, 3)) == (1, 2, 3) for o in outs)
    assert check_image(tmp_path / "a.png", max_pixels=100) == (12, 9)


def test_engines_get_an_input_file_error_naming_the_image(tmp_path):
    (tmp_path / "big.png").write_bytes(header_only_png(4000, 4000))
    with pytest.raises(InputFileError, match=r"big\.png.*\[image_too_large\]"):
        open_rgb(tmp_path / "big.png", max_pixels=12544)
    with pytest.raises(InputFileError, match="media file not found"):
        open_rgb(tmp_path / "nope.png")


def test_trainers_path_gets_rgb_pixels_for_every_format(tmp_path):
    Image.new("RGB", (20, 20), (5, 6, 7)).save(tmp_path / "a.bmp")
    Image.new("CMYK", (20, 20), (0, 0, 0, 0)).save(tmp_path / "b.tiff")
    msgs = [{"role": "user", "content": [{"type": "image", "image": str(tmp_path / "a.bmp")},
                                         {"type": "image", "image": str(tmp_path / "b.tiff")}, {"type": "text", "text": "q"}]}]
    parts = fit_visuals(msgs)[0]["content"]
    assert [p["image"].mode for p in parts[:2]] == ["RGB", "RGB"] and parts[0]["image"].getpixel((0, 0)) == (5, 6, 7)
    assert parts[2] == {"type": "text", "text": "q"}
    text_only = [{"role": "user", "content": [{"type": "text", "text": "q"}]}]
    assert fit_visuals(text_only) is text_only


def test_record_media_checks_headers_or_decodes(tmp_path):
    noisy = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    noisy.save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:2000])
    (tmp_path / "big.png").write_bytes(header_only_png(3000, 3000))
    rec = parse_record({"question": "q", "response1": "a", "response2": "b", "label": 1, "images": ["cut.png"]})
    check_record_media(rec, tmp_path, max_pixels=12544, decode=False)  # the header is fine
    with pytest.raises(RowError, match="truncated"):
        check_record_media(rec, tmp_path, max_pixels=12544)
    gen = parse_record({"question": "q", "response1": {"image": "cut.png"}, "response2": {"image": "big.png"}, "label": 1})
    with pytest.raises(RowError) as e:
        check_record_media(gen, tmp_path, max_pixels=12544, decode=False)
    assert e.value.reason == "image_too_large"


def test_endpoint_wire_format_goes_through_the_gate(tmp_path):
    from r1rm.engines.openai_client import image_data_url

    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "a.jpg")
    raw = (tmp_path / "a.jpg").read_bytes()
    assert image_data_url(tmp_path / "a.jpg") == "data:image/jpeg;base64," + base64.b64encode(raw).decode()
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(tmp_path / "c.jpg")  # a JPEG, but not one an endpoint decodes
    url = image_data_url(tmp_path / "c.jpg")
    assert url.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).mode == "RGB"
    (tmp_path / "big.png").write_bytes(header_only_png(12000, 12000))
    with pytest.raises(InputFileError, match="image_too_large"):
        image_data_url(tmp_path / "big.png")


def test_frames_folder_lists_tiff(tmp_path):
    from r1rm.data.media import list_frames

    for n in ("2.tif", "1.tiff", "3.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / n)
    assert [p.name for p in list_frames(tmp_path)] == ["1.tiff", "2.tif", "3.png"]


def test_header_reports_format_and_mode():
    fmt, mode, size = image_header(_saved(Image.new("CMYK", (5, 4)), "JPEG"), max_pixels=None)
    assert (fmt, mode, size) == ("JPEG", "CMYK", (5, 4))
