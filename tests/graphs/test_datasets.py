"""Dataset zips read defensively (graphs/datasets.py): no Ray."""

from __future__ import annotations

import io
import zipfile

import pytest
from PIL import Image

from graphs.datasets import ZipLimits, read_zip, safe_member_name
from graphs.errors import ApiError


def _png(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="PNG")
    return buf.getvalue()


def _zip(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_images_and_captions_by_stem_hidden_and_other_files_skipped():
    contents = read_zip(_zip({"set/a.png": _png(), "set/a.txt": b"a red square\n",
                              "b.jpg": _png((0, 0, 200)), "orphan.txt": b"no image",
                              ".DS_Store": b"x", "__MACOSX/._a.png": b"x",
                              "notes.md": b"hello"}))
    assert [n for n, _ in contents.images] == ["a.png", "b.jpg"]
    assert contents.captions == {"a": "a red square", "orphan": "no image"}
    assert set(contents.skipped) == {".DS_Store", "__MACOSX/._a.png", "notes.md",
                                     "orphan.txt"}


@pytest.mark.parametrize("name", ["../evil.png", "/etc/passwd.png", "a/../../b.png",
                                  "C:/x.png", "dir\\x.png"])
def test_unsafe_member_names_are_refused(name):
    assert safe_member_name(name) is None
    with pytest.raises(ApiError) as err:
        read_zip(_zip({name: _png()}))
    assert err.value.status == 400 and err.value.param == "zip"
    assert "unsafe name" in err.value.message


def test_zip_bombs_are_refused_before_inflating():
    bomb = _zip({"big.png": b"\0" * (5 * 1024 * 1024)})  # ~5 KB compressed, ratio ~1000:1
    with pytest.raises(ApiError, match="compressed .*:1; at most 100:1"):
        read_zip(bomb)
    with pytest.raises(ApiError, match="would inflate to"):
        read_zip(_zip({"a.png": _png(), "b.png": _png()}, zipfile.ZIP_STORED),
                 ZipLimits(max_total_bytes=100))
    with pytest.raises(ApiError, match="entries; at most 2"):
        read_zip(_zip({f"{i}.png": _png() for i in range(3)}), ZipLimits(max_members=2))


def test_not_a_zip_and_duplicate_names_are_400s():
    with pytest.raises(ApiError, match="not a valid zip"):
        read_zip(b"PK\x03\x04 not really")
    with pytest.raises(ApiError, match="two images named 'a.png'"):
        read_zip(_zip({"x/a.png": _png(), "y/a.png": _png()}))
