"""``--dataset folder`` on small image folders written with Pillow: formats, modes, sizes, layout, split,
bad input (each a one-line error or a correct result) and the decoded cache (reuse, invalidation, atomicity)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _images import class_folder, flat_folder, noise, png16_rgb, save, solid, truncated
from igan.datasets import decode, image_cache
from igan.datasets.folder import load_folder, scan_tree, split_indices
from igan.errors import IganError, UsageError


@pytest.fixture
def load(tmp_path):
    """``load(root, **kwargs)``: load_folder with the cache under tmp_path, no progress bar."""

    def run(root, **kwargs):
        kwargs.setdefault("cache_dir", tmp_path / "cache")
        kwargs.setdefault("image_size", 32)
        return load_folder(root, progress=False, workers=kwargs.pop("workers", 1), **kwargs)

    return run


def _pixels(ds):
    """Every image of both splits, uint8 [N, C, H, W] numpy."""
    parts = [ds.x_train.numpy()] + ([ds.x_test.numpy()] if ds.x_test is not None else [])
    return np.concatenate(parts)


# ------------------------------------------------------------------------------------------------
# decoding: formats, modes, sizes


@pytest.mark.parametrize("ext", [".png", ".bmp", ".webp", ".jpg"])
def test_each_format_decodes_to_its_colour(tmp_path, ext):
    path = solid(tmp_path / f"a{ext}", (200, 30, 90), size=(50, 40))
    pixels, grey, reason = decode.decode_image(path, 32)
    assert reason is None and not grey
    assert pixels.shape == (3, 32, 32) and pixels.dtype == np.uint8
    tol = 3 if ext == ".jpg" else 0  # JPEG is lossy, the others exact
    assert np.abs(pixels.reshape(3, -1).astype(int) - np.array([[200], [30], [90]])).max() <= tol


def test_resize_keeps_the_centred_square(tmp_path):
    # 80x40: red, green, blue bands; the centred 40x40 square (columns 20..59) lies in the green band, with a
    # margin wider than the resampling filter (which reads pixels just outside the square, as torchvision's
    # Resize + CenterCrop does)
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :15] = (255, 0, 0)
    arr[:, 15:65] = (0, 255, 0)
    arr[:, 65:] = (0, 0, 255)
    path = save(tmp_path / "wide.png", Image.fromarray(arr))
    pixels, _, _ = decode.decode_image(path, 32)
    assert (pixels[1] == 255).all() and (pixels[0] == 0).all() and (pixels[2] == 0).all()
    # a tall image: the centre rows survive
    tall = save(tmp_path / "tall.png", Image.fromarray(arr.transpose(1, 0, 2).copy()))
    pixels, _, _ = decode.decode_image(tall, 16)
    assert (pixels[1] == 255).all()


def test_mixed_sizes_all_become_the_image_size(tmp_path, load):
    root = tmp_path / "mixed"
    for i, size in enumerate([(7, 5), (32, 32), (300, 120), (64, 200), (33, 31)]):
        noise(root / f"{i}.png", seed=i, size=size)
    ds = load(root, image_size=64, test_fraction=0)
    assert tuple(ds.x_train.shape) == (5, 3, 64, 64) and ds.x_test is None


def test_cmyk_palette_alpha_16bit_and_bilevel_images(tmp_path):
    d = tmp_path
    cases = {}
    cases["cmyk.jpg"] = (solid(d / "cmyk.jpg", (0, 255, 255, 0), mode="CMYK"), (255, 0, 0), 3)
    pal = Image.new("P", (20, 16))
    pal.putpalette([0, 0, 0, 10, 120, 250] + [0] * (256 * 3 - 6))
    pal.paste(1, (0, 0, 20, 16))
    cases["palette.png"] = (save(d / "palette.png", pal), (10, 120, 250), 0)
    # fully transparent pixels composite to white, opaque ones keep their colour
    transparent = Image.new("RGBA", (20, 16), (255, 0, 0, 0))
    cases["clear.png"] = (save(d / "clear.png", transparent), (255, 255, 255), 0)
    cases["opaque.webp"] = (save(d / "opaque.webp", Image.new("RGBA", (20, 16), (9, 80, 160, 255))), (9, 80, 160), 0)
    half = Image.new("RGBA", (20, 16), (0, 0, 0, 128))  # 50 % black over white
    cases["half.png"] = (save(d / "half.png", half), (127, 127, 127), 1)
    cases["la.png"] = (save(d / "la.png", Image.new("LA", (20, 16), (0, 0))), (255, 255, 255), 0)
    pal_t = pal.copy()
    pal_t.info["transparency"] = 1
    cases["palette_t.png"] = (save(d / "palette_t.png", pal_t, transparency=1), (255, 255, 255), 0)
    # 16-bit grey: 0..65535 maps onto 0..255 (Pillow's own convert would clip all of these to 255)
    cases["grey16.png"] = (save(d / "grey16.png", Image.fromarray(np.full((16, 20), 32896, np.uint16))),
                           (128, 128, 128), 0)
    cases["rgb16.png"] = (png16_rgb(d / "rgb16.png", (65535, 32896, 0)), (255, 128, 0), 0)
    cases["bilevel.bmp"] = (save(d / "bilevel.bmp", Image.new("1", (20, 16), 1)), (255, 255, 255), 0)
    for name, (path, expected, tol) in cases.items():
        pixels, _, reason = decode.decode_image(path, 16)
        assert reason is None, name
        got = pixels.reshape(3, -1)
        assert np.abs(got.astype(int) - np.array(expected)[:, None]).max() <= tol, (name, got[:, 0])


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((10, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # stored: red left half, green right half (wide)
    arr[:, 20:] = (0, 255, 0)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display": shown tall, red on top
    path = save(tmp_path / "phone.jpg", img, exif=exif.tobytes())
    pixels, _, _ = decode.decode_image(path, 8)
    assert pixels[0, 0, 4] > 200 and pixels[1, 0, 4] < 60  # top is red, as displayed


def test_grey_folders_get_one_channel_unless_asked(tmp_path, load):
    root = tmp_path / "grey"
    for i in range(4):
        solid(root / f"{i}.png", 30 * i, mode="L")
    solid(root / "rgb_but_grey.jpg", (77, 77, 77))  # an RGB file whose pixels are grey counts as grey
    ds = load(root, test_fraction=0)
    assert ds.image_shape == (1, 32, 32)
    assert sorted(int(v) for v in ds.x_train[:, 0, 0, 0]) == sorted([0, 30, 60, 90, 77])
    assert load(root, test_fraction=0, mode="rgb").image_shape == (3, 32, 32)
    solid(root / "colour.png", (255, 0, 0))
    assert load(root, test_fraction=0).image_shape == (3, 32, 32)
    grey = load(root, test_fraction=0, mode="grey")
    assert grey.image_shape == (1, 32, 32)
    red = [int(v) for v in grey.x_train[:, 0, 0, 0]]
    assert 76 in red  # Pillow's luma of pure red: 255 * 0.299 = 76.2 -> 76


def test_rgb_to_grey_matches_pillow(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (5, 3, 7, 9), dtype=np.uint8)
    ours = image_cache.rgb_to_grey(rgb)
    for i in range(5):
        pil = np.asarray(Image.fromarray(rgb[i].transpose(1, 2, 0)).convert("L"))
        assert np.array_equal(ours[i, 0], pil)


# ------------------------------------------------------------------------------------------------
# layout, labels, split


def test_class_folders_give_sorted_labels(tmp_path, load):
    root = class_folder(tmp_path / "pets", classes=("dog", "cat", "eel"), per_class=5)
    solid(root / "cat" / "deeper" / "nested.png", (100, 150, 99))  # recursive: still class "cat"
    ds = load(root, test_fraction=0.2)
    assert ds.class_names == ("cat", "dog", "eel") and ds.num_classes == 3
    x, y = np.concatenate([ds.x_train.numpy(), ds.x_test.numpy()]), np.concatenate([ds.y_train, ds.y_test])
    # class_folder colours: red channel 40 + 60 k for the k-th name given (dog 0, cat 1, eel 2)
    given = {"dog": 0, "cat": 1, "eel": 2}
    for label, name in enumerate(ds.class_names):
        reds = x[y == label][:, 0, 0, 0]
        assert np.abs(reds.astype(int) - (40 + 60 * given[name])).max() <= 3
    assert np.bincount(y).tolist() == [6, 5, 5]
    assert np.bincount(ds.y_test.numpy()).tolist() == [1, 1, 1]  # round(0.2 * 5|6) per class
    assert ds.info["layout"] == "classes" and ds.info["test_split"].startswith("0.2 of each class")


def test_a_flat_folder_is_unlabelled_and_read_recursively(tmp_path, load):
    root = flat_folder(tmp_path / "flat", n=8)
    noise(root / "sub" / "deep.png", seed=99)
    ds = load(root, test_fraction=0.25)
    assert ds.num_classes == 1 and ds.class_names == ()
    assert ds.x_train.shape[0] + ds.x_test.shape[0] == 9 and ds.x_test.shape[0] == 2
    assert int(ds.y_train.max()) == 0 and ds.info["layout"] == "flat"


def test_test_subfolder_is_the_test_split(tmp_path, load):
    root = tmp_path / "tt"
    class_folder(root / "train", per_class=3)
    class_folder(root / "test", classes=("cat", "eel"), per_class=2)
    ds = load(root, test_fraction=0.5)  # ignored: test/ decides
    assert ds.x_train.shape[0] == 9 and ds.x_test.shape[0] == 4
    assert ds.class_names == ("cat", "dog", "eel")
    assert ds.y_test.tolist() == [0, 0, 2, 2]
    assert ds.info["test_split"] == "the test/ folder" and ds.info["test_fraction"] is None
    # without train/: everything but test/ trains
    other = tmp_path / "t2"
    class_folder(other, per_class=2)
    class_folder(other / "test", classes=("dog",), per_class=3)
    ds = load(other)
    assert ds.x_train.shape[0] == 6 and ds.y_test.tolist() == [1, 1, 1]


def test_split_indices_by_hand():
    labels = np.array([0] * 10 + [1] * 4 + [2])
    train, test = split_indices(labels, 0.25)
    assert np.bincount(labels[test], minlength=3).tolist() == [3, 1, 0]  # round(2.5) = 3, round(1) = 1, 1 image: 0
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(15))
    again = split_indices(labels, 0.25)
    assert np.array_equal(again[1], test)  # seeded: the same every time
    assert split_indices(labels, 0.0)[1].size == 0
    assert np.bincount(labels[split_indices(labels, 0.01)[1]], minlength=3).tolist() == [1, 1, 0]  # >= 1 per class


def test_hidden_files_and_other_files_are_ignored(tmp_path, load):
    root = flat_folder(tmp_path / "h", n=4)
    (root / ".DS_Store").write_bytes(b"\0\1")
    (root / "._img00.png").write_bytes(b"AppleDouble")  # macOS metadata, named like an image
    (root / ".thumbs").mkdir()
    noise(root / ".thumbs" / "t.png", seed=5)
    (root / "notes.txt").write_text("hello")
    ds = load(root, test_fraction=0)
    assert ds.x_train.shape[0] == 4 and ds.info["skipped"] == 0


def test_symlink_loops_are_read_once(tmp_path, load, capsys):
    root = flat_folder(tmp_path / "loop", n=3)
    noise(root / "a" / "x.png", seed=7)
    os.symlink("..", root / "a" / "up")  # a/up -> loop/ : a loop
    os.symlink(root / "a", root / "alias")  # a second way into a/
    ds = load(root, test_fraction=0)
    assert ds.x_train.shape[0] == 4
    assert "reached again through symbolic links" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# bad input


def _broken_folder(root: Path) -> Path:
    class_folder(root, per_class=4)
    truncated(root / "cat" / "cut.jpg", "JPEG")
    truncated(root / "dog" / "cut.png", "PNG")
    (root / "dog" / "text.png").write_text("this is not a picture")
    (root / "eel" / "empty.jpg").write_bytes(b"")
    os.symlink(root / "nowhere.png", root / "eel" / "dangling.png")
    return root


def test_unreadable_images_are_skipped_with_a_count_and_names(tmp_path, load, capsys):
    root = _broken_folder(tmp_path / "b")
    ds = load(root, test_fraction=0)
    assert ds.x_train.shape[0] == 12 and ds.info["skipped"] == 5
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("warning: skipped"))
    assert "skipped 5 unreadable images of 17" in line and "and 2 more" in line
    assert "cat/cut.jpg (image file is truncated" in line
    # cached: the skipped files are not decoded again, but still reported
    ds = load(root, test_fraction=0)
    assert "skipped 5 unreadable images" in capsys.readouterr().err


def test_strict_refuses_unreadable_images(tmp_path, load):
    root = _broken_folder(tmp_path / "s")
    with pytest.raises(IganError, match=r"5 of 17 images below .* cannot be read \(--strict\): cat/cut.jpg"):
        load(root, strict=True)


@pytest.mark.parametrize("case, error, match", [
    ("missing", IganError, r"does not exist"),
    ("file", UsageError, r"is a file, not a folder"),
    ("npz-file", UsageError, r"is a file, not a folder"),
    ("empty", IganError, r"holds no images \(it is empty\)"),
    ("non-images", IganError, r"no images in .*: 2 files, none of them png, jpg, jpeg, webp, bmp \(e.g. a.txt, b.csv\)"),
    ("all-unreadable", IganError, r"none of the 2 images below .* can be read"),
    ("no-data-dir", UsageError, r"--dataset folder needs --data-dir"),
    ("size", UsageError, r"--image-size must be one of 32, 64, 128, got 48"),
    ("fraction", UsageError, r"--test-fraction must be in \[0, 1\), got 1.0"),
    ("test-unknown-class", IganError, r"classes the training images lack: fox"),
    ("test-flat", IganError, r"holds images directly, but the training images are in class folders"),
    ("test-empty", IganError, r"test holds no images"),
])
def test_bad_folders_get_one_line_errors(tmp_path, load, case, error, match):
    root = tmp_path / case
    kwargs = {}
    if case == "file":
        root = solid(tmp_path / "one.png", (1, 2, 3))
    elif case == "npz-file":
        root = tmp_path / "x.npz"
        np.savez(root, x=np.zeros((2, 8, 8), np.uint8))
    elif case == "empty":
        root.mkdir()
    elif case == "non-images":
        root.mkdir()
        (root / "a.txt").write_text("a")
        (root / "b.csv").write_text("b")
    elif case == "all-unreadable":
        truncated(root / "a.jpg")
        (root / "b.png").write_text("no")
    elif case == "no-data-dir":
        root = None
    elif case == "size":
        kwargs["image_size"] = 48
    elif case == "fraction":
        kwargs["test_fraction"] = 1.0
    elif case == "test-unknown-class":
        class_folder(root, per_class=2)
        class_folder(root / "test", classes=("fox",), per_class=1)
    elif case == "test-flat":
        class_folder(root, per_class=2)
        noise(root / "test" / "a.png", seed=1)
    elif case == "test-empty":
        class_folder(root, per_class=2)
        (root / "test").mkdir()
    with pytest.raises(error, match=match) as info:
        load(root, **kwargs)
    assert info.value.hint  # every refusal says what to do
    if case == "npz-file":
        assert "--dataset npz" in info.value.hint


@pytest.mark.parametrize("case, match", [
    ("flat", r"has no class sub-folders, so its images have no labels"),
    ("one-class", r"has a single class \(cat\); semisup needs two or more"),
    ("no-test", r"--test-fraction 0 and no test/ folder leave no test images"),
])
def test_semisup_needs_labelled_folders(tmp_path, load, case, match):
    root = tmp_path / case
    fraction = 0.0 if case == "no-test" else 0.1
    if case == "flat":
        flat_folder(root, n=3)
    else:
        class_folder(root, classes=("cat",) if case == "one-class" else ("cat", "dog"), per_class=2)
    with pytest.raises(UsageError, match=match):
        load(root, require_labels=True, test_fraction=fraction)


def test_memory_is_checked_before_decoding(tmp_path, load, monkeypatch):
    from igan.datasets import memory

    root = flat_folder(tmp_path / "m", n=4)
    monkeypatch.setattr(memory, "available_host_memory", lambda: 1000)
    with pytest.raises(IganError, match=r"the folder .*m \(4 images at 32x32\) needs 12.0 KiB of host memory, "
                                        r"but only 1000 B is free"):
        load(root)
    assert not (tmp_path / "cache").exists()  # refused before any work


def test_device_memory_refusal_names_the_bytes(monkeypatch):
    from igan.datasets import memory

    monkeypatch.setattr(memory, "free_device_memory", lambda device: 2 * 1024 ** 3)
    memory.require_memory(1024 ** 3, "cuda", "x")  # fits: no error
    with pytest.raises(IganError, match=r"dataset x needs 3.0 GiB of cuda memory, but only 2.0 GiB is free"):
        memory.require_memory(3 * 1024 ** 3, "cuda", "dataset x")


# ------------------------------------------------------------------------------------------------
# the cache


@pytest.fixture
def count_decodes(monkeypatch):
    """A list that records every file the cache decodes."""
    calls: list[str] = []
    real = image_cache.decode_image

    def counting(path, size):
        calls.append(Path(path).name)
        return real(path, size)

    monkeypatch.setattr(image_cache, "decode_image", counting)
    return calls


def _cache_dirs(tmp_path):
    return sorted(p for p in (tmp_path / "cache").iterdir() if p.is_dir())


def test_cache_is_reused_while_the_folder_is_unchanged(tmp_path, load, count_decodes):
    root = class_folder(tmp_path / "c", per_class=4)
    first = load(root)
    assert len(count_decodes) == 12
    second = load(root)
    assert len(count_decodes) == 12  # nothing decoded again
    assert np.array_equal(_pixels(first), _pixels(second)) and first.y_train.tolist() == second.y_train.tolist()
    (folder,) = _cache_dirs(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["shape"] == [12, 3, 32, 32] and len(manifest["entries"]) == 12
    assert [e[0] for e in manifest["entries"]][:2] == ["cat/00.png", "cat/01.jpg"]
    assert first.info["cache"] == str(folder)
    # another size is another cache
    load(root, image_size=64)
    assert len(count_decodes) == 24 and len(_cache_dirs(tmp_path)) == 2


def test_cache_is_rebuilt_when_a_file_is_touched_added_or_removed(tmp_path, load, count_decodes):
    root = class_folder(tmp_path / "c", per_class=4)
    before = load(root, test_fraction=0)
    count_decodes.clear()
    target = root / "dog" / "03.png"
    assert target.is_file()
    solid(target, (1, 2, 3), size=(24, 20))  # rewritten in place ...
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))  # ... with a new mtime
    after = load(root, test_fraction=0)
    assert count_decodes == ["03.png"]  # only the changed file
    changed = [i for i in range(12) if not np.array_equal(_pixels(before)[i], _pixels(after)[i])]
    assert len(changed) == 1 and _pixels(after)[changed[0]][:, 0, 0].tolist() == [1, 2, 3]

    count_decodes.clear()
    os.utime(root / "cat" / "00.png")  # touch: same content, new mtime -> decoded again
    load(root, test_fraction=0)
    assert count_decodes == ["00.png"]

    count_decodes.clear()
    solid(root / "eel" / "new.bmp", (9, 9, 9))
    added = load(root, test_fraction=0)
    assert count_decodes == ["new.bmp"] and added.x_train.shape[0] == 13

    count_decodes.clear()
    (root / "cat" / "01.jpg").unlink()
    removed = load(root, test_fraction=0)
    assert count_decodes == [] and removed.x_train.shape[0] == 12
    assert before.info["fingerprint"] != removed.info["fingerprint"]
    (folder,) = _cache_dirs(tmp_path)
    assert len(list(folder.glob("images-*.npy"))) == 1  # the replaced arrays are gone


def test_cache_never_writes_into_the_data_folder(tmp_path, load):
    root = class_folder(tmp_path / "ro", per_class=3)
    listing = sorted(str(p) for p in root.rglob("*"))
    load(root)
    assert sorted(str(p) for p in root.rglob("*")) == listing


def test_an_unwritable_cache_dir_still_loads_with_a_warning(tmp_path, load, capsys):
    root = class_folder(tmp_path / "d", per_class=3)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    ds = load(root, cache_dir=blocker / "cache")
    assert ds.x_train.shape[0] + ds.x_test.shape[0] == 9 and ds.info["cache"] is None
    assert "could not write the image cache" in capsys.readouterr().err


def test_default_cache_location_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = flat_folder(tmp_path / "f", n=3)
    ds = load_folder(root, image_size=32, progress=False)
    assert Path(ds.info["cache"]).parent == tmp_path / "xdg" / "igan" / "image-cache"
    assert Path(ds.info["cache"]).name.startswith("f-32px-auto-")


def test_a_crash_while_writing_leaves_no_cache_that_is_trusted(tmp_path, load, monkeypatch):
    root = class_folder(tmp_path / "c", per_class=3)
    good = load(root, test_fraction=0)
    (folder,) = _cache_dirs(tmp_path)
    old_manifest = (folder / "manifest.json").read_text()
    solid(root / "cat" / "extra.png", (5, 6, 7))

    real_save = np.save

    def dies_half_way(f, arr, allow_pickle=False):
        f.write(b"\x93NUMPY partial")  # a few bytes of the new array, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(image_cache.np, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        load(root, test_fraction=0)
    monkeypatch.setattr(image_cache.np, "save", real_save)
    assert (folder / "manifest.json").read_text() == old_manifest  # the old cache is still in charge
    assert not list(folder.glob(".*.part"))
    assert len(list(folder.glob("images-*.npy"))) == 1

    # the manifest write itself fails after the new array is in place: the new array is dropped
    real_write = image_cache._fsync_write

    def manifest_fails(path, write):
        if "manifest" in path.name:
            raise OSError(28, "No space left on device")
        return real_write(path, write)

    monkeypatch.setattr(image_cache, "_fsync_write", manifest_fails)
    ds = load(root, test_fraction=0)  # the images still load; the cache is not updated
    assert ds.x_train.shape[0] == 10 and ds.info["cache"] is None
    monkeypatch.setattr(image_cache, "_fsync_write", real_write)
    assert (folder / "manifest.json").read_text() == old_manifest
    assert len(list(folder.glob("images-*.npy"))) == 1

    again = load(root, test_fraction=0)
    assert again.x_train.shape[0] == 10 and again.info["cache"] == str(folder)
    assert np.array_equal(np.delete(_pixels(again), 3, axis=0), _pixels(good))  # after cat/00, 01, 02


def test_a_damaged_cache_is_rebuilt(tmp_path, load, capsys, count_decodes):
    root = class_folder(tmp_path / "c", per_class=3)
    good = load(root, test_fraction=0)
    (folder,) = _cache_dirs(tmp_path)
    (array,) = folder.glob("images-*.npy")
    array.write_bytes(array.read_bytes()[:1000])  # truncated on disk
    count_decodes.clear()
    again = load(root, test_fraction=0)
    assert "is damaged; rebuilding it" in capsys.readouterr().err
    assert len(count_decodes) == 9 and np.array_equal(_pixels(again), _pixels(good))
    (folder / "manifest.json").write_text("{not json")
    assert np.array_equal(_pixels(load(root, test_fraction=0)), _pixels(good))


def test_parallel_decoding_gives_the_same_pixels(tmp_path, load):
    root = _broken_folder(tmp_path / "p")
    one = load(root, test_fraction=0, cache_dir=tmp_path / "c1", workers=1)
    four = load(root, test_fraction=0, cache_dir=tmp_path / "c4", workers=4)
    assert np.array_equal(_pixels(one), _pixels(four)) and one.y_train.tolist() == four.y_train.tolist()


def test_scan_lists_files_relative_and_sorted(tmp_path):
    root = tmp_path / "s"
    for rel in ["b/2.png", "a/1.JPG", "a/0.webp", "c.bmp", "x.gif"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    tree = scan_tree(root)
    assert [f.rel for f in tree.files] == ["a/0.webp", "a/1.JPG", "b/2.png", "c.bmp"]
    assert tree.others == ["x.gif"]


def test_leftovers_of_dead_builds_are_removed_but_young_ones_kept(tmp_path, load):
    root = flat_folder(tmp_path / "l", n=3)
    load(root)
    (folder,) = _cache_dirs(tmp_path)
    old_array, young_array = folder / "images-dead00000000.npy", folder / "images-other0000000.npy"
    old_part = folder / ".images-dead.npy.part"
    for p in (old_array, young_array, old_part):
        p.write_bytes(b"x")
    for p in (old_array, old_part):
        os.utime(p, (0, 0))  # 1970: a build that died long ago
    solid(root / "new.png", (1, 1, 1))
    load(root)  # a rebuild cleans up
    assert not old_array.exists() and not old_part.exists()
    assert young_array.exists()  # may be another process's build in progress


def test_the_option_defaults_are_the_loaders():
    from igan.datasets import folder, user_data

    assert user_data.DEFAULTS["image_size"] == folder.DEFAULT_SIZE
    assert user_data.DEFAULTS["test_fraction"] == folder.DEFAULT_TEST_FRACTION
    assert user_data.DEFAULTS["image_mode"] == folder.MODES[0] == "auto"


def test_a_progress_bar_while_decoding_on_a_terminal(monkeypatch, tmp_path):
    from igan import console

    monkeypatch.setattr(console, "_live", lambda: False)
    assert image_cache._Progress(5, enabled=True).bar is None  # a log file gets the summary line only
    monkeypatch.setattr(console, "_live", lambda: True)
    seen = []
    real = image_cache._Progress.advance

    def advance(self, n=1):
        real(self, n)
        seen.append(self.bar.tasks[0].completed)

    monkeypatch.setattr(image_cache._Progress, "advance", advance)
    load_folder(flat_folder(tmp_path / "p", n=4), image_size=32, cache_dir=tmp_path / "c", workers=1)
    assert seen == [1, 2, 3, 4]
