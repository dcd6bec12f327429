import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import cvstudy.trainers.data as data
from cvstudy.trainers.data import (
    DEMO_SOURCE,
    MAX_CLASSES,
    DataError,
    check_pair,
    demo_note,
    gather_rows,
    load_dataset,
    stratified_split,
)
from tests.conftest import make_arrays, write_dataset


def test_loads_validates_and_splits(tiny_data):
    d = load_dataset(str(tiny_data), val_fraction=0.25, seed=0)
    assert d.num_classes == 3 and d.image_size == 16
    assert len(d.train_y) + len(d.val_y) == 42 and len(d.test_y) == 18
    assert set(d.val_y.tolist()) == {0, 1, 2}  # stratified: every class is validated
    assert d.class_counts.tolist() == [18, 9, 4]
    assert d.train_x.dtype == np.uint8 and d.source == str(tiny_data.resolve())
    assert demo_note(d) is None  # a real dataset: nothing to warn about


def test_split_is_seeded_stratified_and_keeps_rare_classes():
    y = np.array([0] * 50 + [1] * 5 + [2] * 2 + [3])
    tr, va = stratified_split(y, 0.1, seed=1)
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(y)))
    assert np.bincount(y[va], minlength=4).tolist() == [5, 1, 1, 0]  # the singleton stays in train
    assert set(y[tr].tolist()) == {0, 1, 2, 3}
    assert (stratified_split(y, 0.1, 1)[1] == va).all() and not (stratified_split(y, 0.1, 2)[1] == va).all()
    # A share that rounds a class's whole count into validation still leaves it one training image:
    # 0.75 of 2 rounds to 2 (kept at 1), 0.75 of 4 is 3.
    y = np.array([0, 0, 1, 1, 1, 1])
    tr, va = stratified_split(y, 0.75, seed=0)
    assert np.bincount(y[va]).tolist() == [1, 3] and np.bincount(y[tr]).tolist() == [1, 1]


def test_demo_dataset_is_long_tailed_balanced_and_deterministic(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./data here
    a, b = load_dataset(None), load_dataset(None)
    assert a.source == DEMO_SOURCE and a.train_x.shape[1:] == (32, 32, 3) and a.train_x.dtype == np.uint8
    counts = np.bincount(np.concatenate([a.train_y, a.val_y]))
    assert counts[0] / counts[-1] == pytest.approx(10, rel=0.15)
    assert np.bincount(a.test_y).tolist() == [40] * 10
    assert (a.train_x == b.train_x).all()
    # a person is told, once per command, that the demo set stands in for data (the sweep and train alike)
    assert "using the embedded demo dataset" in demo_note(a) and "docs/long-tailed-data.md" in demo_note(a)


def _case(name):
    """Malformed copies of a good dataset: (file, mutation, expected message fragment)."""
    good = make_arrays()
    cases = {
        "missing": ("test_target.npy", None, "missing file"),
        "truncated": ("train_data.npy", "truncate", "truncated .npy file"),
        "not_npy": ("train_data.npy", "garbage", "not a readable .npy file"),
        "object": ("train_target.npy", np.array([1, "a", None], dtype=object), "object array"),
        "rank": ("train_data.npy", good["train_data.npy"][..., 0, 0], "4 dimensions"),
        "channels_first": ("train_data.npy", good["train_data.npy"].transpose(0, 3, 1, 2), "channels-first"),
        "grayscale": ("train_data.npy", good["train_data.npy"][..., 0], "grayscale"),
        "float_pixels": ("test_data.npy", good["test_data.npy"].astype(np.float32), "pixels are float32"),
        "nan_pixels": (
            "test_data.npy",
            np.where(np.arange(16)[None, :, None, None] == 3, np.nan, good["test_data.npy"].astype(np.float32)),
            "NaN pixel",
        ),
        "float_labels": ("train_target.npy", good["train_target.npy"].astype(np.float64), "labels are float64"),
        "negative_labels": ("train_target.npy", good["train_target.npy"] - 1, "negative label -1"),
        "out_of_range": (
            "train_target.npy",
            np.where(good["train_target.npy"] == 2, 9, good["train_target.npy"]),
            "labels out of range",
        ),
        "length": ("train_target.npy", good["train_target.npy"][:-3], "39 labels but"),
        "empty": ("test_data.npy", good["test_data.npy"][:0], "empty split"),
        "shape_mismatch": ("test_data.npy", np.zeros((18, 20, 20, 3), np.uint8), "images are 20x20 but"),
        "one_class": ("train_target.npy", np.zeros_like(good["train_target.npy"]), "needs two classes"),
        "single_image": (
            "train_target.npy",
            np.where((good["train_target.npy"] == 2) & (np.arange(42) < 41), 0, good["train_target.npy"]),
            "class 2 has 1 image",
        ),
        "huge_label": (
            "train_target.npy",
            np.where(np.arange(42) == 0, 2**60, good["train_target.npy"]),
            "not a class index",
        ),
        "unseen_class": (
            "test_target.npy",
            np.where(good["test_target.npy"] == 2, 3, good["test_target.npy"]),
            "appear in test but not in",
        ),
    }
    return cases[name]


BAD_CASES = [
    "missing",
    "truncated",
    "not_npy",
    "object",
    "rank",
    "channels_first",
    "grayscale",
    "float_pixels",
    "nan_pixels",
    "float_labels",
    "negative_labels",
    "out_of_range",
    "length",
    "empty",
    "shape_mismatch",
    "unseen_class",
    "one_class",
    "single_image",
    "huge_label",
]


def make_bad(directory, name):
    filename, mutation, message = _case(name)
    write_dataset(directory, make_arrays())
    path = directory / filename
    if mutation is None:
        path.unlink()
    elif isinstance(mutation, str) and mutation == "truncate":
        path.write_bytes(path.read_bytes()[:-100])
    elif isinstance(mutation, str) and mutation == "garbage":
        path.write_bytes(b"this is not numpy")
    elif mutation.dtype == object:
        np.save(path, mutation, allow_pickle=True)  # the user's bad file; cvstudy must refuse it
    else:
        np.save(path, mutation)
    return filename, message


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_refused_with_file_and_problem(tmp_path, case):
    filename, message = make_bad(tmp_path / "data", case)
    with pytest.raises(DataError) as err:
        load_dataset(str(tmp_path / "data"))
    text = str(err.value)
    assert filename in text and message in text and "\n" not in text, text


def test_the_validation_split_is_disjoint_from_training_and_stratified_by_class(tmp_path):
    """Every training image is distinct (its bytes name it): the validation images are training images
    that training no longer sees, each class keeping its share (fraction x count, rounded, at least one
    when the class has two or more), and nothing lost."""
    arrays = make_arrays(n_per_class=(40, 20, 10, 5), n_test=2, size=8, seed=3)
    x, y = arrays["train_data.npy"], arrays["train_target.npy"]
    assert len({img.tobytes() for img in x}) == len(x)
    d = load_dataset(str(write_dataset(tmp_path / "d", arrays)), val_fraction=0.2, seed=0)
    label = {img.tobytes(): int(c) for img, c in zip(x, y)}
    train = [img.tobytes() for img in d.train_x]
    val = [img.tobytes() for img in d.val_x]
    assert not set(train) & set(val) and sorted(train + val) == sorted(label)
    assert [label[k] for k in val] == d.val_y.tolist() and [label[k] for k in train] == d.train_y.tolist()
    assert np.bincount(d.val_y, minlength=4).tolist() == [8, 4, 2, 1]  # 20 % of 40, 20, 10, 5


def test_splits_are_read_from_the_files_a_chunk_at_a_time_without_a_second_copy(tmp_path, monkeypatch):
    """The splits equal numpy's own load-and-index (the oracle), whatever the chunk boundaries; and the
    load allocates the splits plus one chunk, not the file once more (tracemalloc counts numpy's arrays).
    An in-memory load and index would peak at about twice the images."""
    arrays = make_arrays(n_per_class=(300, 120, 45), n_test=20, size=32, seed=5)
    directory = write_dataset(tmp_path / "d", arrays)
    row = 32 * 32 * 3
    monkeypatch.setattr(data, "CHUNK_BYTES", 7 * row + 5)  # 7 rows a chunk: boundaries fall inside classes
    load_dataset(str(directory), val_fraction=0.2, seed=4)  # the first load's lazy imports: not counted
    tracemalloc.start()
    try:
        d = load_dataset(str(directory), val_fraction=0.2, seed=4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    x, y = np.load(directory / "train_data.npy"), np.load(directory / "train_target.npy")
    tr, va = stratified_split(y, 0.2, 4)
    assert np.array_equal(d.train_x, x[tr]) and np.array_equal(d.val_x, x[va])
    assert np.array_equal(d.test_x, np.load(directory / "test_data.npy"))
    assert np.array_equal(d.train_y, y[tr]) and np.array_equal(d.val_y, y[va])
    images = x.nbytes + d.test_x.nbytes  # 1.4 MB
    assert peak < 1.1 * images, f"peak {peak} bytes for {images} bytes of images"


PATHS = {name: f"d/{name}" for name in ("train_data.npy", "train_target.npy", "test_data.npy", "test_target.npy")}


def _refusal(train_x, train_y, test_x, test_y) -> str:
    with pytest.raises(DataError) as err:
        check_pair(train_x, train_y, test_x, test_y, PATHS)
    return str(err.value)


def test_cross_split_refusals_say_the_sizes_and_classes_exactly():
    """Hand-made arrays, the whole message checked: heights and widths in order (no image is square
    here), the missing classes listed (five at most), the largest label accepted and the first refused."""
    images = lambda n, h, w: np.zeros((n, h, w, 3), np.uint8)  # noqa: E731
    labels = np.array([0, 0, 1, 1])
    assert _refusal(images(4, 6, 8), labels, images(4, 10, 12), labels) == (
        "d/test_data.npy: images are 10x12 but d/train_data.npy images are 6x8"
    )
    gaps = _refusal(images(6, 6, 8), np.array([0, 0, 2, 2, 4, 4]), images(2, 6, 8), np.array([0, 2]))
    assert "classes 1, 3 have no images" in gaps and "max label 4" in gaps
    for top_label, shown in ((6, "1, 2, 3, 4, 5 have"), (7, "1, 2, 3, 4, 5 ... have"), (9, "1, 2, 3, 4, 5 ... have")):
        y = np.array([0, 0, top_label, top_label])  # top_label - 1 classes missing: five, six, eight
        assert f"classes {shown} no images" in _refusal(images(4, 6, 8), y, images(2, 6, 8), np.array([0, 0]))
    assert _refusal(images(3, 6, 8), np.array([0, 0, 1]), images(2, 6, 8), np.array([0, 1])) == (
        "d/train_target.npy: class 1 has 1 image; every class needs two or more (one for the validation "
        "split, one to train on)"
    )
    assert _refusal(images(4, 6, 8), labels, images(7, 6, 8), np.array([0, 2, 3, 4, 5, 6, 7])) == (
        "d/test_target.npy: class(es) 2, 3, 4, 5, 6 appear in test but not in d/train_target.npy (classes 0..1)"
    )
    top = _refusal(images(4, 6, 8), np.array([0, 0, MAX_CLASSES - 1, MAX_CLASSES - 1]), images(2, 6, 8), labels[:2])
    assert "labels out of range" in top  # a class index, checked as one
    beyond = _refusal(images(4, 6, 8), np.array([0, 0, MAX_CLASSES, MAX_CLASSES]), images(2, 6, 8), labels[:2])
    assert beyond.startswith(f"d/train_target.npy: label {MAX_CLASSES} is not a class index")


def test_memory_maps_that_cannot_be_read_in_chunks_are_indexed_directly(tmp_path):
    """A memmap with no file behind it and a non-contiguous view of one are gathered by numpy's own
    indexing (no file to read, or rows that are not whole runs of bytes in it): the same rows as x[ix]."""
    x = np.arange(20 * 4 * 6 * 3, dtype=np.uint8).reshape(20, 4, 6, 3)
    ix = [np.array([1, 4, 5, 19]), np.array([0, 2])]
    fileless = x.view(np.memmap)
    assert fileless.filename is None and fileless.flags.c_contiguous
    assert all(np.array_equal(got, x[i]) for got, i in zip(gather_rows(fileless, ix), ix, strict=True))
    np.save(tmp_path / "x.npy", x)
    strided = np.load(tmp_path / "x.npy", mmap_mode="r")[:, :, ::2]
    assert strided.filename is not None and not strided.flags.c_contiguous
    want = x[:, :, ::2]
    assert all(np.array_equal(got, want[i]) for got, i in zip(gather_rows(strided, ix), ix, strict=True))


def _bytes_read() -> int:
    """The kernel's count of bytes this process has read by read calls (not page faults of a mapping)."""
    return int(next(x for x in Path("/proc/self/io").read_text().splitlines() if x.startswith("rchar:")).split()[1])


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="reads the kernel's counters in Linux's /proc")
def test_a_memory_mapped_split_is_read_once_holding_one_chunk_at_a_time(tmp_path, monkeypatch):
    """Gathering every row of a 12 MiB file in chunks of a quarter of it: the kernel counts its bytes read
    once (about the file, not a multiple of it, and not 0 as a mapping's page faults would be), and the
    allocations peak at the rows plus one chunk (1.25x), where a second chunk alive would make 1.5x."""
    x = np.zeros((4096, 32, 32, 3), np.uint8)  # 12 MiB
    x[::7] = 1
    np.save(tmp_path / "x.npy", x)
    monkeypatch.setattr(data, "CHUNK_BYTES", x.nbytes // 4)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    ix = np.arange(len(x))
    before = _bytes_read()
    tracemalloc.start()
    try:
        train, val = data.gather_rows(mapped, [ix[ix % 10 != 0], ix[ix % 10 == 0]])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    read = _bytes_read() - before
    assert np.array_equal(train, x[ix % 10 != 0]) and np.array_equal(val, x[ix % 10 == 0])
    assert 1.0 * x.nbytes <= read <= 1.05 * x.nbytes, read
    assert peak <= 1.35 * x.nbytes, f"peak {peak / x.nbytes:.2f}x the rows"
