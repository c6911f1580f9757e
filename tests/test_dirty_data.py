"""Dirty data: a folder with every kind of bad and unusual image, and what becomes of each.

Bad files (empty, truncated PNG and JPEG, random bytes, an HTML page named .jpg, a
decompression bomb under a tiny pixel limit) stop a run with a list naming each one and
why, or are left out and counted with --skip-bad.  Unusual files (16-bit, RGBA, LA,
palette with transparency, CMYK, grayscale, EXIF-rotated) load with the right pixels.
Hidden files and folders are never read.  The same picture in training and validation is
reported as leakage; under two labels it is a label conflict.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.data import scan
from headstart.data.checks import data_checks
from headstart.data.images import load_data
from headstart.data.scan import MAX_IMAGE_PIXELS_ENV, open_image, scan_images
from headstart.data.transforms import ImageDataset, Preprocessing, make_transform, to_model_mode
from headstart.errors import ConfigError, DataError
from tests.conftest import headstart, run_cli

TINY_LIMIT = "1000"  # pixels: the 40x40 "bomb" is over it, every other image (<= 24x16) under


def _noise(seed: int, size: tuple[int, int] = (16, 16)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _save(path: Path, img: Image.Image, fmt: str | None = None, **kw: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kw)
    return path


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _upright() -> Image.Image:
    """24 wide x 16 high, a red block in the top-left corner, the rest blue."""
    img = Image.new("RGB", (24, 16), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 8, 8))
    return img


# Each bad file and a fragment of the reason it must be given.
BAD = {
    "cat/zero.jpg": "empty file (0 bytes)",
    "cat/half.png": "truncated",
    "dog/half.jpg": "truncated",
    "dog/noise.png": "not an image (unrecognised format)",
    "dog/page.jpg": "not an image: an HTML page",
}
BOMB = "dog/bomb.png"
UNUSUAL = (
    "cat/deep16.png",
    "cat/rgba.png",
    "cat/la.png",
    "cat/palette.png",
    "cat/cmyk.jpg",
    "cat/gray.png",
    "cat/exif.jpg",
)


def build_dirty(root: Path) -> Path:
    """Two classes of distinct noise images plus every kind of bad, unusual and hidden file."""
    for c, name in enumerate(("cat", "dog")):
        for i in range(6):
            _save(root / name / f"ok{i}.png", Image.fromarray(_noise(100 * c + i)))
    # bad files
    good_png = _encoded(Image.fromarray(_noise(7)), "PNG")
    good_jpg = _encoded(Image.fromarray(_noise(8)), "JPEG")
    (root / "cat" / "zero.jpg").write_bytes(b"")
    (root / "cat" / "half.png").write_bytes(good_png[: len(good_png) // 2])
    (root / "dog" / "half.jpg").write_bytes(good_jpg[: len(good_jpg) // 2])
    (root / "dog" / "noise.png").write_bytes(np.random.default_rng(9).bytes(500))
    (root / "dog" / "page.jpg").write_text(
        "<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head></html>\n"
    )
    _save(root / BOMB, Image.fromarray(_noise(10, (40, 40))))  # 1600 pixels
    # unusual but good files
    deep = np.zeros((16, 16), dtype=np.uint16)
    deep[0, 1], deep[1, 0], deep[1, 1] = 65535, 32768, 1000
    _save(root / "cat" / "deep16.png", Image.fromarray(deep))
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)  # (0, 0): fully transparent black
    rgba[0, 1] = (200, 10, 10, 255)
    rgba[1, 0] = (0, 0, 0, 128)
    _save(root / "cat" / "rgba.png", Image.fromarray(rgba, "RGBA"))
    la = np.zeros((16, 16, 2), dtype=np.uint8)
    la[0, 1] = (60, 255)
    _save(root / "cat" / "la.png", Image.fromarray(la, "LA"))
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([0, 0, 0, 10, 200, 30])
    pal.putpixel((1, 0), 1)
    _save(root / "cat" / "palette.png", pal, transparency=0)
    _save(root / "cat" / "cmyk.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0)), quality=95)
    gray = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16), "L")
    _save(root / "cat" / "gray.png", gray)
    # Stored sideways (rotated 90 degrees counter-clockwise) with EXIF orientation 6
    # ("rotate 90 clockwise to display"), as a phone held upright writes it.
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(root / "cat" / "exif.jpg", _upright().transpose(Image.Transpose.ROTATE_90), exif=exif)
    # hidden files and folders: junk that must never be read, nor become a class
    for junk in (
        ".ipynb_checkpoints/ok0-checkpoint.png",
        "cat/.ipynb_checkpoints/ok1-checkpoint.png",
        "__MACOSX/cat/._ok0.png",
        "cat/._ok2.png",
        "cat/.hidden.png",
        ".DS_Store",
        "cat/.DS_Store",
        ".git/objects/x.png",
    ):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_bytes(b"\x00\x05\x16\x07junk")
    return root


@pytest.fixture()
def dirty(tmp_path: Path) -> Path:
    return build_dirty(tmp_path / "dirty")


@pytest.fixture()
def tiny_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, TINY_LIMIT)


def _without(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).unlink()


# --------------------------------------------------------------------------- bad files


def test_every_bad_file_is_listed_with_its_reason(dirty: Path, tiny_limit: None) -> None:
    with pytest.raises(DataError) as e:
        load_data(dirty)
    msg = str(e.value)
    assert msg.startswith("6 unreadable image(s): ")
    for name, reason in BAD.items():
        assert f"{dirty / name} ({reason}" in msg, name
    assert f"{dirty / BOMB} (40 x 40 = 1,600 pixels, over the limit of 1,000" in msg
    assert MAX_IMAGE_PIXELS_ENV in msg
    assert "--skip-bad" in msg
    for good in ("ok0.png", *UNUSUAL):
        assert f"{good} (" not in msg


def test_skip_bad_leaves_them_out_and_records_them(
    dirty: Path, tiny_limit: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="headstart"):
        data = load_data(dirty, skip_bad=True)
    assert data.classes == ["cat", "dog"]
    assert data.class_counts() == {"cat": 6 + len(UNUSUAL), "dog": 6}
    skipped = dict(data.skipped)
    assert sorted(skipped) == sorted(str(dirty / n) for n in [*BAD, BOMB])
    for name, reason in BAD.items():
        assert skipped[str(dirty / name)].startswith(reason)
    assert not any(Path(p) in data.digests for p in skipped)
    assert "left out 6 of 25 image(s) (--skip-bad): 6 unreadable" in caplog.text
    assert str(dirty / "dog" / "page.jpg") in caplog.text  # each one named in the log
    checks = data_checks(data, data, None)
    assert checks["checked"] == 25 and checks["skipped"]["count"] == 6
    assert checks["leakage"] is None


def test_the_bomb_is_an_image_under_the_default_limit(dirty: Path) -> None:
    _without(dirty, list(BAD))
    data = load_data(dirty)
    assert dirty / BOMB in data.items


def test_decompression_bomb_is_refused_before_decoding(
    dirty: Path, tiny_limit: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DataError, match=r"bomb\.png: 40 x 40 = 1,600 pixels, over the limit"):
        open_image(dirty / BOMB)
    # a training worker opening the file later refuses it the same way
    data = load_data(dirty, check_images=False)
    with pytest.raises(DataError, match="over the limit of 1,000"):
        data.load_image(data.items.index(dirty / BOMB))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "0")  # no limit
    assert open_image(dirty / BOMB).size == (40, 40)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "lots")
    with pytest.raises(ConfigError, match=rf"\${MAX_IMAGE_PIXELS_ENV}='lots'; valid: a whole"):
        open_image(dirty / BOMB)


def test_a_limit_above_pillows_own_is_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _save(tmp_path / "big.png", Image.new("L", (60, 60)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses over 2x this
    with pytest.raises(DataError, match=r"big\.png: too many pixels for Pillow \(Image size"):
        open_image(path)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "1000000")  # asking for more raises Pillow's
    assert open_image(path).size == (60, 60)


def test_a_file_failing_mid_training_names_the_file(dirty: Path) -> None:
    data = load_data(dirty, check_images=False)
    with pytest.raises(DataError, match=r"page\.jpg: not an image: an HTML page"):
        data.load_image(data.items.index(dirty / "dog" / "page.jpg"))


# --------------------------------------------------------------------------- hidden


def test_hidden_files_and_folders_never_become_classes_or_items(dirty: Path) -> None:
    _without(dirty, list(BAD))
    data = load_data(dirty)  # the junk under hidden names is never opened
    assert data.classes == ["cat", "dog"]
    assert len(data) == 6 + len(UNUSUAL) + 7
    for item in data.items:
        assert isinstance(item, Path)
        parts = item.relative_to(dirty).parts
        assert not any(p.startswith(".") or p == "__MACOSX" for p in parts), item


# --------------------------------------------------------------------------- conversions


def _pixels(data_dir: Path, name: str, channels: int) -> Image.Image:
    return to_model_mode(open_image(data_dir / name), channels)


def test_sixteen_bit_is_scaled_not_clipped(dirty: Path) -> None:
    assert open_image(dirty / "cat/deep16.png").mode.startswith("I")
    gray = np.asarray(_pixels(dirty, "cat/deep16.png", 1))
    assert gray[0, 0] == 0 and gray[0, 1] == 255 and gray[1, 0] == 128 and gray[1, 1] == 4
    assert _pixels(dirty, "cat/deep16.png", 3).getpixel((0, 1)) == (128, 128, 128)


def test_alpha_is_composited_on_white(dirty: Path) -> None:
    rgb = _pixels(dirty, "cat/rgba.png", 3)
    assert rgb.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    assert rgb.getpixel((1, 0)) == (200, 10, 10)  # opaque keeps its colour
    assert all(126 <= v <= 128 for v in rgb.getpixel((0, 1)))  # half black over white
    la = _pixels(dirty, "cat/la.png", 1)
    assert la.getpixel((0, 0)) == 255 and la.getpixel((1, 0)) == 60


def test_palette_transparency_and_colours(dirty: Path) -> None:
    assert open_image(dirty / "cat/palette.png").mode == "P"
    rgb = _pixels(dirty, "cat/palette.png", 3)
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.getpixel((1, 0)) == (10, 200, 30)


def test_cmyk_jpeg_comes_out_red(dirty: Path) -> None:
    assert open_image(dirty / "cat/cmyk.jpg").mode == "CMYK"
    r, g, b = _pixels(dirty, "cat/cmyk.jpg", 3).getpixel((8, 8))
    assert r > 240 and g < 15 and b < 15


def test_grayscale_for_rgb_models_and_rgb_for_gray_models(dirty: Path) -> None:
    rgb = np.asarray(_pixels(dirty, "cat/gray.png", 3))
    assert rgb.shape == (16, 16, 3)
    assert (rgb[..., 0] == np.arange(256).reshape(16, 16)).all()
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    colour = np.asarray(Image.open(dirty / "dog/ok0.png").convert("RGB"), dtype=np.float64)
    gray = np.asarray(_pixels(dirty, "dog/ok0.png", 1), dtype=np.float64)
    luma = colour @ np.array([0.299, 0.587, 0.114])  # ITU-R 601, as PIL converts
    assert gray.shape == (16, 16) and np.abs(gray - luma).max() <= 1.0


def test_exif_rotated_jpeg_comes_out_upright(dirty: Path) -> None:
    with Image.open(dirty / "cat/exif.jpg") as raw:
        assert raw.size == (16, 24)  # stored sideways
    img = _pixels(dirty, "cat/exif.jpg", 3)
    assert img.size == (24, 16)
    arr = np.asarray(img, dtype=np.int64)
    expected = np.asarray(_upright(), dtype=np.int64)
    assert np.abs(arr - expected)[2:-2, 2:-2].mean() < 8  # JPEG is lossy; layout is not
    assert arr[3, 3, 0] > 200 and arr[3, 20, 2] > 200  # red top-left, blue top-right
    # and the tensor a model gets is upright too
    _without(dirty, list(BAD))
    data = load_data(dirty)
    pre = Preprocessing(input_size=(3, 16, 24), mean=(0, 0, 0), std=(1, 1, 1), crop_pct=1.0)
    ds = ImageDataset(data, make_transform(pre, train=False), 3)
    x, _ = ds[data.items.index(dirty / "cat/exif.jpg")]
    assert x.shape == (3, 16, 24)
    assert float(x[0, :8, :8].mean()) > 0.8 and float(x[0, :8, 16:].mean()) < 0.2


# --------------------------------------------------------------------------- duplicates


def test_same_picture_under_two_labels_is_a_conflict(dirty: Path) -> None:
    _without(dirty, list(BAD))
    # the same pixels re-encoded: a different file, the same picture
    Image.open(dirty / "cat/ok0.png").save(dirty / "dog/copy.bmp")
    with pytest.raises(DataError, match=r"1 image\(s\) appear under more than one label") as e:
        load_data(dirty)
    assert f"{dirty / 'cat/ok0.png'} (cat) = {dirty / 'dog/copy.bmp'} (dog)" in str(e.value)
    data = load_data(dirty, skip_bad=True)  # every copy left out: neither label is trusted
    assert dirty / "cat/ok0.png" not in data.items and dirty / "dog/copy.bmp" not in data.items
    assert dict(data.skipped)[str(dirty / "dog/copy.bmp")] == "same picture under labels cat, dog"


def test_same_picture_twice_under_one_label_warns(
    dirty: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _without(dirty, list(BAD))
    shutil.copy(dirty / "dog/ok1.png", dirty / "dog/ok1 (1).png")
    with caplog.at_level(logging.WARNING, logger="headstart"):
        data = load_data(dirty)
    assert "1 picture(s) appear more than once under the same label" in caplog.text
    checks = data_checks(data, data, None)
    assert checks["duplicates"] == {
        "groups": 1,
        "extra_copies": 1,
        "examples": [["dog/ok1 (1).png", "dog/ok1.png"]],
    }


def test_leakage_between_train_and_a_validation_folder(
    dirty: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _without(dirty, list(BAD))
    val = tmp_path / "val"
    (val / "cat").mkdir(parents=True)
    shutil.copy(dirty / "cat/ok3.png", val / "cat/leaked.png")
    _save(val / "cat/new.png", Image.fromarray(_noise(500)))
    _save(val / "dog/new.png", Image.fromarray(_noise(501)))
    data = load_data(dirty)
    val_data = load_data(val, classes=data.classes)
    with caplog.at_level(logging.WARNING, logger="headstart"):
        checks = data_checks(data, data, val_data)
    assert checks["leakage"] == {
        "count": 1,
        "of": 3,
        "examples": [["cat/ok3.png", "cat/leaked.png"]],
    }
    assert "leakage: 1 of 3 validation image(s) also in training" in caplog.text
    assert checks["checked"] == len(data) + 3
    clean = data_checks(data, data, load_data(val, classes=data.classes).subset([1, 2]))
    assert clean["leakage"]["count"] == 0


def test_leakage_within_a_split(dirty: Path) -> None:
    _without(dirty, list(BAD))
    shutil.copy(dirty / "cat/ok0.png", dirty / "cat/again.png")
    data = load_data(dirty)
    a, b = data.items.index(dirty / "cat/ok0.png"), data.items.index(dirty / "cat/again.png")
    rest = [i for i in range(len(data)) if i not in (a, b)]
    train, val = data.subset([a, *rest[:-2]]), data.subset([b, *rest[-2:]])
    checks = data_checks(data, train, val)
    assert checks["leakage"]["count"] == 1
    assert checks["leakage"]["examples"] == [["cat/ok0.png", "cat/again.png"]]
    assert data_checks(data, data.subset(rest[:-2]), data.subset(rest[-2:]))["leakage"] == {
        "count": 0,
        "of": 2,
        "examples": [],
    }


# --------------------------------------------------------------------------- CSV


def test_csv_problems_are_listed_by_spreadsheet_row(dirty: Path) -> None:
    _without(dirty, list(BAD))
    csv_path = dirty / "labels.csv"
    csv_path.write_text(
        "path,label\n"  # row 1
        "cat/ok0.png,cat\n"  # row 2
        "cat/ok1.png,\n"  # row 3: empty label
        "cat/gone.png,cat\n"  # row 4: missing file
        "\n"  # row 5: blank, skipped
        "./cat/ok0.png,cat\n"  # row 6: same file as row 2
        "dog/ok0.png,dog\n"  # row 7
        "dog/ok0.png,cat\n"  # row 8: same file again, another label
    )
    with pytest.raises(DataError) as e:
        load_data(csv_path)
    msg = str(e.value)
    assert msg.startswith(f"{csv_path}: ")
    assert "empty label on row(s) 3" in msg
    assert "missing file on row(s) 4 (cat/gone.png)" in msg
    assert (
        "file listed again on row(s) 6 (./cat/ok0.png, first on row 2), "
        "8 (dog/ok0.png, first on row 7)"
    ) in msg


def test_csv_pointing_at_bad_files_lists_them(dirty: Path) -> None:
    (dirty / "l.csv").write_text(
        "path,label\ncat/ok0.png,a\ndog/page.jpg,b\ncat/zero.jpg,b\ndog/ok0.png,b\n"
    )
    with pytest.raises(DataError, match=r"2 unreadable image\(s\)") as e:
        load_data(dirty / "l.csv")
    assert "page.jpg (not an image: an HTML page" in str(e.value)
    data = load_data(dirty / "l.csv", skip_bad=True)
    assert data.items == [dirty / "cat/ok0.png", dirty / "dog/ok0.png"]
    assert data.targets.tolist() == [0, 1] and len(data.skipped) == 2


# --------------------------------------------------------------------------- the scan


def test_threads_and_processes_give_the_same_checks(
    dirty: Path, tiny_limit: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = sorted(p for p in dirty.rglob("*.*") if p.suffix in (".png", ".jpg"))
    assert len(paths) > 16  # enough for a pool, not the serial path
    monkeypatch.setattr(scan, "_BATCH", 7)  # several batches, the last one short
    threads = scan_images(paths, workers=2, executor="thread", cache=False)
    processes = scan_images(paths, workers=2, executor="process", cache=False)
    serial = scan_images(paths, workers=1, cache=False)
    assert threads == processes == serial
    assert [c.path for c in threads] == paths
    with pytest.raises(ConfigError, match="executor 'fibers'; valid: thread, process"):
        scan_images(paths, executor="fibers")


def test_unchanged_files_are_not_decoded_again(
    dirty: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = sorted((dirty / "dog").glob("ok*.png"))
    first = scan_images(paths)

    def fail(path: Path, limit: int | None = None) -> scan.ImageCheck:
        raise AssertionError(f"decoded again: {path}")

    monkeypatch.setattr(scan, "check_image", fail)
    assert scan_images(paths) == first  # all from the cache
    # a changed file (new size and mtime) is checked again
    _save(paths[0], Image.fromarray(_noise(999, (17, 17))))
    os.utime(paths[0], ns=(1, 1))
    with pytest.raises(AssertionError, match="decoded again"):
        scan_images(paths)
    monkeypatch.undo()
    again = scan_images(paths)
    assert again[0].digest != first[0].digest and again[1:] == first[1:]


# --------------------------------------------------------------------------- CLI


FAST = ("--strategy", "scratch", "--epochs", "1", "--batch-size", "4", "--json")


def test_cli_fit_stops_on_bad_files_and_names_each(
    dirty: Path, tmp_path: Path, tiny_limit: None
) -> None:
    result = run_cli("fit", dirty, *FAST, "--out", tmp_path / "run")
    assert result.code == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "6 unreadable image(s)" in last and "--skip-bad" in last
    for name, reason in BAD.items():
        assert f"{dirty / name} ({reason}" in last
    assert "bomb.png (40 x 40 = 1,600 pixels" in last
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # a child process: interpreter and torch start-up
def test_real_headstart_process_exits_1_naming_the_bomb(
    dirty: Path, tmp_path: Path, tiny_limit: None
) -> None:
    _without(dirty, list(BAD))
    result = headstart("fit", dirty, *FAST, "--out", tmp_path / "run")
    assert result.code == 1 and result.stdout == ""
    assert "Traceback" not in result.stderr
    assert f"1 unreadable image(s): {dirty / BOMB} (40 x 40 = 1,600 pixels" in result.stderr


def test_cli_fit_skip_bad_records_skipped_and_leakage(
    dirty: Path, tmp_path: Path, tiny_limit: None
) -> None:
    val = tmp_path / "val"
    for seed, name in enumerate(("cat", "dog")):
        (val / name).mkdir(parents=True)
        _save(val / name / "fresh.png", Image.fromarray(_noise(700 + seed)))
    shutil.copy(dirty / "dog/ok2.png", val / "dog/seen.png")
    (val / "dog" / "empty.png").write_bytes(b"")
    out = tmp_path / "run"
    result = run_cli("fit", dirty, "--val", val, "--skip-bad", *FAST, "--out", out)
    assert result.code == 0, result.stderr
    assert "left out 6 of 25 image(s) (--skip-bad)" in result.stderr
    assert "leakage: 1 of 3 validation image(s) also in training" in result.stderr
    meta = json.loads((out / "headstart.json").read_text())
    checks = meta["data"]["checks"]
    assert checks["checked"] == 25 + 4
    assert checks["skipped"]["count"] == 7  # 6 in the data, 1 in the validation folder
    assert {Path(f["path"]).name for f in checks["skipped"]["files"]} == {
        *(Path(n).name for n in BAD),
        "bomb.png",
        "empty.png",
    }
    assert checks["leakage"]["count"] == 1
    assert checks["leakage"]["examples"] == [["dog/ok2.png", "dog/seen.png"]]
    assert meta["config"]["skip_bad"] is True
    report = (out / "report.md").read_text()
    assert "- images checked: 29; left out (--skip-bad): 7" in report
    assert "page.jpg`: not an image: an HTML page" in report
    assert "- leakage: 1 of 3 validation images also in training" in report


@pytest.mark.parametrize("command", ["fit", "pretrain", "compare", "recommend"])
def test_skip_bad_is_a_flag_of_every_command_that_loads_data(command: str) -> None:
    from headstart.cli.main import build_parser

    args = build_parser().parse_args([command, "DATA", "--skip-bad"])
    assert args.skip_bad is True
    assert build_parser().parse_args([command, "DATA"]).skip_bad is False


def test_cli_compare_skip_bad_records_the_checks(
    dirty: Path, tmp_path: Path, tiny_limit: None
) -> None:
    shutil.copy(dirty / "cat/ok4.png", dirty / "cat/ok4 copy.png")  # leaks across folds
    out = tmp_path / "cmp"
    args = ("--strategies", "scratch", "--folds", "2", "--epochs", "1", "--batch-size", "8")
    result = run_cli("compare", dirty, "--skip-bad", *args, "--out", out, "--json")
    assert result.code == 0, result.stderr
    checks = json.loads((out / "compare.json").read_text())["data_checks"]
    assert checks["skipped"]["count"] == 6
    assert checks["duplicates"]["examples"] == [["cat/ok4 copy.png", "cat/ok4.png"]]
    md = (out / "compare.md").read_text()
    assert "## Data checks" in md and "left out (--skip-bad): 6" in md
    assert run_cli("compare", dirty, *args, "--out", tmp_path / "no").code == 1


def test_in_memory_arrays_are_not_checked_and_say_so() -> None:
    from headstart.choose.report import check_lines

    data = load_data("builtin:digits?classes=0-1&per_class=4")
    checks = data_checks(data, data.subset(range(6)), data.subset([6, 7]))
    assert checks["checked"] == 0 and checks["leakage"] is None
    assert check_lines(checks) == []


def test_float_and_32_bit_images_are_scaled_by_their_range() -> None:
    unit = Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32), "F")
    assert np.asarray(to_model_mode(unit, 1)).tolist() == [[0, 128], [255, 64]]
    wide = Image.fromarray(np.array([[0, 100000], [50000, 200000]], dtype=np.int32), "I")
    assert np.asarray(to_model_mode(wide, 1)).tolist() == [[0, 128], [64, 255]]
    eight = Image.fromarray(np.array([[0, 200]], dtype=np.int32), "I")
    assert np.asarray(to_model_mode(eight, 1)).tolist() == [[0, 200]]


def test_a_class_left_empty_by_skip_bad_is_an_error(dirty: Path) -> None:
    (dirty / "emu").mkdir()
    (dirty / "emu" / "a.jpg").write_bytes(b"")
    (dirty / "emu" / "b.png").write_text("<html></html>")
    with pytest.raises(DataError, match=r"no usable image left in class\(es\) emu after --skip"):
        load_data(dirty, skip_bad=True)
    # against a trained model's classes an empty class is allowed, as without --skip-bad
    data = load_data(dirty, skip_bad=True, classes=["cat", "dog", "emu"])
    assert data.class_counts()["emu"] == 0
