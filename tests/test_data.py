"""Tests for headstart.data: loading folders, CSVs and built-in sets, splits, transforms."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from headstart.data.images import DATASETS, load_data
from headstart.data.labelled import UNLABELLED, LabeledData, list_inputs, stratified_split
from headstart.data.transforms import ImageDataset, Preprocessing, make_transform, to_model_mode
from headstart.errors import ConfigError, DataError

CLASSES = ("cat", "dog", "emu")


def _png(path: Path, value: int, *, mode: str = "RGB", size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size, size, 3), value, dtype=np.uint8)
    arr[0, 0] = (value + 1) % 256  # not flat, so resizes and crops have something to move
    Image.fromarray(arr).convert(mode).save(path)
    return path


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """3 classes x 4 PNGs; one image per class in a nested folder."""
    root = tmp_path / "data"
    for c, name in enumerate(CLASSES):
        for i in range(4):
            sub = "nested/" if i == 3 else ""
            _png(root / name / f"{sub}{i}.png", 10 * c + i)
    return root


# --------------------------------------------------------------------------- folders


def test_folder_loads_classes_items_and_targets(folder: Path) -> None:
    data = load_data(folder)
    assert data.classes == list(CLASSES)
    assert len(data) == 12
    assert data.targets.dtype == np.int64
    assert data.class_counts() == {"cat": 4, "dog": 4, "emu": 4}
    assert data.root == folder
    assert data.allow_hflip
    assert folder / "emu" / "nested" / "3.png" in data.items
    img = data.load_image(0)
    assert img.size == (8, 8)
    described = data.describe()
    assert described["spec"] == str(folder)
    assert described["n_items"] == 12
    assert described["classes"] == list(CLASSES)
    assert described["fingerprint"] == data.fingerprint()


def test_folder_extensions_are_case_insensitive_and_others_ignored(folder: Path) -> None:
    _png(folder / "cat" / "upper.PNG", 1)
    (folder / "cat" / "notes.txt").write_text("not an image")
    data = load_data(folder)
    assert data.class_counts()["cat"] == 5
    assert all(isinstance(p, Path) and p.suffix.lower() == ".png" for p in data.items)


def test_hidden_files_and_folders_are_ignored(folder: Path) -> None:
    _png(folder / ".thumbs" / "a.png", 1)  # hidden class folder
    _png(folder / "__MACOSX" / "a.png", 1)
    _png(folder / "cat" / "._0.png", 1)  # macOS resource fork: hidden file
    (folder / "dog" / ".cache").mkdir()
    (folder / "dog" / ".cache" / "x.png").write_bytes(b"junk")  # hidden sub-folder
    data = load_data(folder)
    assert data.classes == list(CLASSES)
    assert len(data) == 12


def test_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere.*no such file or folder"):
        load_data(tmp_path / "nowhere")


def test_folder_without_class_folders(tmp_path: Path) -> None:
    _png(tmp_path / "flat" / "a.png", 1)
    with pytest.raises(DataError, match="no classes: expected one sub-folder per class in") as e:
        load_data(tmp_path / "flat")
    assert str(tmp_path / "flat") in str(e.value)


def test_class_folder_without_images_is_named(folder: Path) -> None:
    (folder / "fox").mkdir()
    (folder / "fox" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no images") as e:
        load_data(folder)
    assert str(folder / "fox") in str(e.value)


def test_corrupt_images_are_listed_with_count(folder: Path) -> None:
    (folder / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "dog" / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="2 unreadable image") as e:
        load_data(folder)
    assert str(folder / "cat" / "broken.png") in str(e.value)
    assert str(folder / "dog" / "empty.jpg") in str(e.value)
    # without the check the set loads, and reading the bad item names it
    data = load_data(folder, check_images=False)
    bad = data.items.index(folder / "cat" / "broken.png")
    with pytest.raises(DataError, match="broken.png"):
        data.load_image(bad)


def test_many_corrupt_images_list_ten_and_the_count(tmp_path: Path) -> None:
    for i in range(12):
        (tmp_path / "d" / "a").mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / "a" / f"{i:02d}.png").write_bytes(b"bad")
    with pytest.raises(DataError, match=r"12 unreadable.*\(12 in all\)") as e:
        load_data(tmp_path / "d")
    assert "11.png" not in str(e.value)


def test_not_a_data_set_file(tmp_path: Path) -> None:
    path = _png(tmp_path / "one.png", 1)
    with pytest.raises(DataError, match=r"one\.png: not a data set"):
        load_data(path)


# --------------------------------------------------------------------------- classes=


def test_known_classes_set_the_order_and_allow_missing_ones(folder: Path) -> None:
    data = load_data(folder, classes=["emu", "zebra", "dog", "cat"])
    assert data.classes == ["emu", "zebra", "dog", "cat"]
    assert data.class_counts() == {"emu": 4, "zebra": 0, "dog": 4, "cat": 4}
    cat = data.items.index(folder / "cat" / "0.png")
    assert data.targets[cat] == 3


def test_known_classes_allow_an_empty_class_folder(folder: Path) -> None:
    (folder / "zebra").mkdir()
    data = load_data(folder, classes=["cat", "dog", "emu", "zebra"])
    assert data.class_counts()["zebra"] == 0


def test_unknown_label_against_known_classes_names_the_folder(folder: Path) -> None:
    with pytest.raises(DataError, match=r"not a class of this model; valid classes: cat, dog"):
        load_data(folder, classes=["cat", "dog"])
    with pytest.raises(DataError) as e:
        load_data(folder, classes=["cat", "dog"])
    assert f"class folder {folder / 'emu'}" in str(e.value)


def test_unknown_label_against_known_classes_csv(folder: Path) -> None:
    (folder / "labels.csv").write_text("path,label\ncat/0.png,cat\ndog/0.png,wolf\n")
    with pytest.raises(DataError, match=r"label 'wolf' in .*labels\.csv.*valid classes: cat"):
        load_data(folder / "labels.csv", classes=["cat", "dog"])


# --------------------------------------------------------------------------- CSV


def test_csv_relative_and_absolute_paths(folder: Path, tmp_path: Path) -> None:
    absolute = folder / "dog" / "1.png"
    csv_path = folder / "labels.csv"
    csv_path.write_text(f"path,label\ncat/0.png,kitty\n\n{absolute},puppy\ncat/1.png,kitty\n")
    data = load_data(csv_path)
    assert data.classes == ["kitty", "puppy"]
    assert data.items == [folder / "cat" / "0.png", absolute, folder / "cat" / "1.png"]
    assert data.targets.tolist() == [0, 1, 0]
    assert data.root == folder
    assert data.spec == str(csv_path)


def test_csv_extra_columns_any_order(folder: Path) -> None:
    (folder / "l.csv").write_text("label,notes,path\ncat,x,cat/0.png\ndog,,dog/0.png\n")
    data = load_data(folder / "l.csv")
    assert data.classes == ["cat", "dog"]


def test_csv_without_columns_lists_found(folder: Path) -> None:
    (folder / "l.csv").write_text("file,class\ncat/0.png,cat\n")
    with pytest.raises(DataError, match=r"l\.csv: the header must name .* \(found: file, class\)"):
        load_data(folder / "l.csv")


def test_csv_empty(folder: Path) -> None:
    (folder / "l.csv").write_text("")
    with pytest.raises(DataError, match=r"l\.csv: empty CSV"):
        load_data(folder / "l.csv")
    (folder / "l.csv").write_text("path,label\n")
    with pytest.raises(DataError, match=r"l\.csv: no rows after the header"):
        load_data(folder / "l.csv")


def test_csv_bad_rows_are_listed_by_row(folder: Path) -> None:
    (folder / "l.csv").write_text(
        "path,label\ncat/0.png,cat\ncat/1.png,\nnope.png,dog\ndog/0.png,dog\ndog/9.png,dog\n"
    )
    with pytest.raises(DataError) as e:
        load_data(folder / "l.csv")
    msg = str(e.value)
    assert "l.csv" in msg
    assert "empty label on row(s) 3" in msg
    assert "missing file on row(s) 4 (nope.png), 6 (dog/9.png)" in msg


def test_csv_corrupt_image_is_named(folder: Path) -> None:
    (folder / "bad.png").write_bytes(b"nope")
    (folder / "l.csv").write_text("path,label\nbad.png,cat\ncat/0.png,cat\n")
    with pytest.raises(DataError, match=r"1 unreadable image.*bad\.png"):
        load_data(folder / "l.csv")


# --------------------------------------------------------------------------- builtin


def test_digits_whole_set() -> None:
    data = load_data("builtin:digits")
    assert len(data) == 1797
    assert data.classes == [str(i) for i in range(10)]
    assert not data.allow_hflip
    item = data.items[0]
    assert isinstance(item, np.ndarray)
    assert item.dtype == np.uint8 and item.shape == (8, 8)
    assert max(int(np.asarray(x).max()) for x in data.items) == 255
    assert data.load_image(0).mode == "L"
    assert "digits" in DATASETS


def test_digits_class_subsets_and_per_class() -> None:
    data = load_data("builtin:digits?classes=0,2,5-7&per_class=5")
    assert data.classes == ["0", "2", "5", "6", "7"]
    assert set(data.class_counts().values()) == {5}
    assert len(data) == 25
    ranged = load_data("builtin:digits?classes=0-4")
    assert ranged.classes == ["0", "1", "2", "3", "4"]


def test_digits_rest_is_the_complement_of_per_class() -> None:
    chosen = load_data("builtin:digits?classes=1-3&per_class=7&seed=3")
    rest = load_data("builtin:digits?classes=1-3&per_class=7&seed=3&split=rest")
    whole = load_data("builtin:digits?classes=1-3")
    assert rest.classes == chosen.classes == whole.classes

    def keys(d: LabeledData) -> set[tuple[int, bytes]]:
        return {(int(t), np.asarray(x).tobytes()) for x, t in zip(d.items, d.targets, strict=True)}

    assert len(chosen) + len(rest) == len(whole)
    assert keys(chosen) | keys(rest) == keys(whole)
    assert not keys(chosen) & keys(rest)


def test_digits_seed_changes_selection_and_is_repeatable() -> None:
    a = load_data("builtin:digits?classes=0-1&per_class=5&seed=0")
    b = load_data("builtin:digits?classes=0-1&per_class=5&seed=0")
    c = load_data("builtin:digits?classes=0-1&per_class=5&seed=1")
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()
    # a class's selection does not depend on which other classes are asked for
    wide = load_data("builtin:digits?classes=0-4&per_class=5&seed=0")
    assert all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(a.items, wide.items[:10], strict=True)
    )


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("builtin:digits?colour=red", r"unknown option\(s\) colour; valid: classes, per_class"),
        ("builtin:digits?per_class=0", r"per_class='0'; valid: a whole number >= 1"),
        ("builtin:digits?per_class=many", r"per_class='many'"),
        ("builtin:digits?seed=-1", r"seed='-1'; valid"),
        ("builtin:digits?classes=0-12", r"classes='0-12': no class '10'; valid: 0, 1"),
        ("builtin:digits?classes=4-2", r"classes='4-2'.*backwards"),
        ("builtin:digits?split=test&per_class=3", r"split='test'; valid: chosen, rest"),
        ("builtin:digits?split=rest", r"split=rest needs per_class"),
        ("builtin:digits?per_class=1000", r"per_class=1000 but class 0 has"),
        ("builtin:digits?classes", r"key=value.*valid keys: classes"),
        ("builtin:letters", r"unknown built-in data set 'letters'; valid: digits"),
    ],
)
def test_digits_bad_options(spec: str, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        load_data(spec)


def test_digits_with_known_classes() -> None:
    data = load_data("builtin:digits?classes=1-2&per_class=2", classes=["0", "1", "2"])
    assert data.class_counts() == {"0": 0, "1": 2, "2": 2}
    with pytest.raises(DataError, match=r"class '2' of builtin:digits"):
        load_data("builtin:digits?classes=1-2&per_class=2", classes=["0", "1"])


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_stable_and_sensitive(folder: Path, tmp_path: Path) -> None:
    first = load_data(folder).fingerprint()
    assert load_data(folder).fingerprint() == first
    # same content elsewhere: same fingerprint (paths are relative to the root)
    copy = tmp_path / "copy"
    for p in folder.rglob("*.png"):
        dest = copy / p.relative_to(folder)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(p.read_bytes())
    assert load_data(copy).fingerprint() == first

    # one changed pixel
    img_path = copy / "dog" / "2.png"
    arr = np.asarray(Image.open(img_path)).copy()
    arr[4, 4, 0] ^= 1
    Image.fromarray(arr).save(img_path)
    changed = load_data(copy).fingerprint()
    assert changed != first

    # one relabel: same bytes, another class
    (copy / "cat" / "1.png").rename(copy / "emu" / "moved.png")
    relabelled = load_data(copy).fingerprint()
    assert relabelled not in (first, changed)


def test_fingerprint_csv_relabel(folder: Path) -> None:
    (folder / "l.csv").write_text("path,label\ncat/0.png,a\ncat/1.png,b\n")
    before = load_data(folder / "l.csv").fingerprint()
    (folder / "l.csv").write_text("path,label\ncat/0.png,a\ncat/1.png,a\n")
    assert load_data(folder / "l.csv").fingerprint() != before


def test_fingerprint_of_arrays_sees_a_pixel() -> None:
    items: list[np.ndarray | Path] = [np.zeros((4, 4), np.uint8), np.ones((4, 4), np.uint8)]
    a = LabeledData(spec="mem", classes=["x", "y"], items=items, targets=np.array([0, 1]))
    changed = np.zeros((4, 4), np.uint8)
    changed[1, 1] = 7
    items2: list[np.ndarray | Path] = [changed, np.ones((4, 4), np.uint8)]
    b = LabeledData(spec="mem", classes=["x", "y"], items=items2, targets=np.array([0, 1]))
    assert a.fingerprint() != b.fingerprint()


# --------------------------------------------------------------------------- subset


def test_subset_keeps_classes_and_notes_the_cut(folder: Path) -> None:
    data = load_data(folder)
    sub = data.subset(np.array([0, 5, 11]))
    assert sub.classes == data.classes
    assert sub.spec == data.spec
    assert sub.items == [data.items[0], data.items[5], data.items[11]]
    assert sub.targets.tolist() == [data.targets[i] for i in (0, 5, 11)]
    assert sub.note == "3 of 12 items"
    assert sub.describe()["note"] == "3 of 12 items"
    assert "note" not in data.describe()
    assert sub.fingerprint() != data.fingerprint()
    empty = data.subset([], note="validation")
    assert len(empty) == 0 and empty.note == "validation"
    assert empty.class_counts() == {"cat": 0, "dog": 0, "emu": 0}


# --------------------------------------------------------------------------- list_inputs


def test_list_inputs(folder: Path, tmp_path: Path) -> None:
    loose = _png(tmp_path / "loose.jpg", 3)
    found = list_inputs([folder / "dog", loose, folder / "cat" / "0.png", loose])
    # in the order given, a folder's images sorted in its place, each once
    assert found[:-2] == sorted(found[:-2]) and found[-2:] == [loose, folder / "cat" / "0.png"]
    assert len(found) == 6
    assert loose in found and folder / "dog" / "nested" / "3.png" in found
    with pytest.raises(DataError, match="ghost.png: no such file"):
        list_inputs([tmp_path / "ghost.png"])
    (tmp_path / "void").mkdir()
    (tmp_path / "void" / ".hidden.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"void: folder has no images"):
        list_inputs([tmp_path / "void"])
    with pytest.raises(DataError, match="no inputs"):
        list_inputs([])


# --------------------------------------------------------------------------- split


def test_split_is_stratified_disjoint_and_repeatable() -> None:
    targets = np.repeat(np.arange(3), [10, 20, 30])
    train, val = stratified_split(targets, val_fraction=0.2, seed=0)
    assert len(val) == 12 and len(train) == 48
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted([*train, *val]) == list(range(60))
    assert np.bincount(targets[val]).tolist() == [2, 4, 6]
    again = stratified_split(targets, val_fraction=0.2, seed=0)
    assert np.array_equal(again[1], val)
    other = stratified_split(targets, val_fraction=0.2, seed=1)
    assert not np.array_equal(other[1], val)


def test_split_gives_every_class_one_validation_example() -> None:
    targets = np.repeat(np.arange(5), 3)
    _, val = stratified_split(targets, val_fraction=0.1, seed=0)
    assert sorted(targets[val].tolist()) == [0, 1, 2, 3, 4]


def test_split_zero_fraction() -> None:
    train, val = stratified_split(np.array([0, 1, 1]), val_fraction=0, seed=0)
    assert train.tolist() == [0, 1, 2] and len(val) == 0
    assert val.dtype == np.int64


def test_split_refuses_a_class_with_one_example() -> None:
    targets = np.array([0, 0, 0, 1, 2, 2])
    with pytest.raises(DataError, match=r"'dog' \(1\).*--val-fraction 0"):
        stratified_split(targets, val_fraction=0.3, seed=0, classes=["cat", "dog", "emu"])
    with pytest.raises(DataError, match=r"#1 \(1\)"):
        stratified_split(targets, val_fraction=0.3, seed=0)
    with pytest.raises(ConfigError, match="val-fraction"):
        stratified_split(targets, val_fraction=1.5, seed=0)


# --------------------------------------------------------------------------- transforms

RGB_PRE = Preprocessing(input_size=(3, 16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_eval_transform_shape_and_normalisation() -> None:
    img = Image.new("RGB", (20, 30), (255, 128, 0))
    out = make_transform(RGB_PRE, train=False)(img)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    expected = (torch.tensor([255, 128, 0]) / 255.0 - 0.5) / 0.25
    assert torch.allclose(out[:, 8, 8], expected, atol=1e-4)


def test_eval_transform_resizes_short_side_then_crops() -> None:
    # a centre stripe: after the short-side resize to 18 and a crop of 16, the edges of a
    # 18-wide square are cut and the stripe stays centred
    arr = np.zeros((36, 36), dtype=np.uint8)
    arr[:, 17:19] = 255
    pre = Preprocessing(input_size=(1, 16, 16), mean=(0.0,), std=(1.0,), crop_pct=0.875)
    t = make_transform(pre, train=False)
    out = t(Image.fromarray(arr))
    assert out.shape == (1, 16, 16)
    assert out[0, 8, 7:9].min() > 0.3 and out[0, 8, 0] == 0
    wide = t(Image.new("L", (40, 20)))  # aspect ratio kept, so the crop still fits
    assert wide.shape == (1, 16, 16)


def test_non_square_input_size() -> None:
    pre = Preprocessing(input_size=(3, 12, 16), mean=(0, 0, 0), std=(1, 1, 1), crop_pct=1.0)
    img = Image.new("RGB", (30, 30))
    assert make_transform(pre, train=False)(img).shape == (3, 12, 16)
    assert make_transform(pre, train=True)(img).shape == (3, 12, 16)


def test_train_transform_light_and_flip() -> None:
    arr = np.zeros((16, 16), dtype=np.uint8)
    arr[:, :8] = 255  # left half bright
    img = Image.fromarray(arr)
    pre = Preprocessing(input_size=(1, 16, 16), mean=(0.0,), std=(1.0,))
    no_flip = make_transform(pre, train=True, allow_hflip=False)
    torch.manual_seed(0)
    outs = [no_flip(img) for _ in range(20)]
    assert all(o.shape == (1, 16, 16) for o in outs)
    assert all(o[0, :, 0].mean() > o[0, :, -1].mean() for o in outs)  # never mirrored
    with_flip = make_transform(pre, train=True, allow_hflip=True)
    flipped = [with_flip(img) for _ in range(30)]
    assert any(o[0, :, 0].mean() < o[0, :, -1].mean() for o in flipped)
    # augment="none" is the eval transform
    plain = make_transform(pre, train=True, augment="none")
    assert torch.equal(plain(img), make_transform(pre, train=False)(img))


def test_transform_bad_options() -> None:
    with pytest.raises(ConfigError, match=r"'heavy'; valid: light, none"):
        make_transform(RGB_PRE, train=True, augment="heavy")
    pre = Preprocessing(input_size=(3, 8, 8), mean=(0, 0, 0), std=(1, 1, 1), interpolation="x")
    with pytest.raises(ConfigError, match=r"interpolation 'x'; valid: .*bicubic"):
        make_transform(pre, train=False)


@pytest.mark.parametrize("interp", ["bilinear", "bicubic", "nearest"])
def test_interpolations(interp: str) -> None:
    pre = Preprocessing(input_size=(3, 8, 8), mean=(0, 0, 0), std=(1, 1, 1), interpolation=interp)
    assert make_transform(pre, train=False)(Image.new("RGB", (11, 9))).shape == (3, 8, 8)


# --------------------------------------------------------------------------- modes


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "CMYK", "1", "I;16", "I", "F"])
def test_to_model_mode(mode: str, channels: int) -> None:
    img = Image.new("RGB", (4, 4), (200, 100, 50)).convert(mode)
    out = to_model_mode(img, channels)
    assert out.mode == ("RGB" if channels == 3 else "L")
    assert out.size == (4, 4)


def test_rgba_transparency_goes_over_white() -> None:
    img = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert to_model_mode(img, 3).getpixel((0, 0)) == (255, 255, 255)
    assert to_model_mode(img, 1).getpixel((0, 0)) == 255
    pal = Image.new("P", (2, 2), 0)
    pal.putpalette([0, 0, 0, 10, 20, 30])
    pal.info["transparency"] = 0
    assert to_model_mode(pal, 3).getpixel((0, 0)) == (255, 255, 255)


def test_palette_image_keeps_its_colours() -> None:
    pal = Image.new("P", (2, 2), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30])
    assert to_model_mode(pal, 3).getpixel((0, 0)) == (10, 20, 30)


def test_sixteen_bit_png_is_scaled_to_eight_bits(tmp_path: Path) -> None:
    arr = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    img = Image.open(tmp_path / "deep.png")
    gray = to_model_mode(img, 1)
    assert np.asarray(gray).tolist() == [[0, 255], [128, 4]]
    rgb = to_model_mode(img, 3)
    assert rgb.getpixel((1, 0)) == (255, 255, 255)


def test_to_model_mode_bad_channels() -> None:
    with pytest.raises(ConfigError, match="1 or 3 channels"):
        to_model_mode(Image.new("L", (2, 2)), 4)


# --------------------------------------------------------------------------- dataset


def test_image_dataset_folder_and_pickle(folder: Path) -> None:
    data = load_data(folder)
    ds = ImageDataset(data, make_transform(RGB_PRE, train=True), 3, indices=[1, 6])
    assert len(ds) == 2
    x, y = ds[1]
    assert x.shape == (3, 16, 16) and y == int(data.targets[6]) and isinstance(y, int)
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(
        ImageDataset(data, make_transform(RGB_PRE, train=False), 3)[0][0],
        ImageDataset(clone.data, make_transform(RGB_PRE, train=False), 3)[0][0],
    )
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch[0].shape == (2, 3, 16, 16) and batch[1].tolist() == [0, 1]


def test_image_dataset_digits_gray_to_rgb() -> None:
    data = load_data("builtin:digits?classes=0-1&per_class=2")
    pre = Preprocessing(input_size=(3, 8, 8), mean=(0, 0, 0), std=(1, 1, 1), crop_pct=1.0)
    ds = ImageDataset(data, make_transform(pre, train=False), 3)
    x, y = ds[3]
    assert x.shape == (3, 8, 8) and y == 1
    assert torch.equal(x[0], x[1])
    raw = torch.from_numpy(np.asarray(data.items[3])).float() / 255.0
    assert torch.allclose(x[0], raw, atol=1e-6)
    pickle.loads(pickle.dumps(ds))


def test_unlabelled_items_for_predict(folder: Path) -> None:
    paths = list_inputs([folder / "cat"])
    data = LabeledData(
        spec="predict",
        classes=list(CLASSES),
        items=list(paths),
        targets=np.full(len(paths), UNLABELLED),
    )
    assert data.class_counts() == {"cat": 0, "dog": 0, "emu": 0}
    assert len(data.fingerprint()) == 64
    x, y = ImageDataset(data, make_transform(RGB_PRE, train=False), 3)[0]
    assert x.shape == (3, 16, 16) and y == UNLABELLED
    with pytest.raises(ValueError, match="out of range"):
        LabeledData(spec="x", classes=["a"], items=list(paths[:1]), targets=np.array([1]))
