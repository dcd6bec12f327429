"""The data layer: load and validate the user's .npy files, carve a stratified validation split.

Layout (see data/README.md): a directory with ``train_data.npy`` / ``test_data.npy`` (N x H x W x 3
uint8, H == W) and ``train_target.npy`` / ``test_target.npy`` (N integer labels 0..K-1, K inferred).
Nothing is unpickled, ever. Every refusal is a ``DataError`` whose message is one line naming the file
and the problem. Without a dataset, an embedded long-tailed demo set is built from scikit-learn's
bundled digits (no network).
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import VAL_FRACTION
from .errors import DataError

MAX_CLASSES = 100_000  # a label beyond this is not a class index (and would allocate a huge count array)
CHUNK_BYTES = 16 * 2**20  # rows read at a time from a memory-mapped split (bytes): the load's peak past the splits
FILES = ("train_data.npy", "train_target.npy", "test_data.npy", "test_target.npy")
DEMO_SOURCE = "embedded demo dataset (scikit-learn digits as 32x32 RGB, long-tailed train, balanced test)"


@dataclass(frozen=True)
class Dataset:
    """Three splits as host arrays: images N x H x W x 3 uint8, labels N int64."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    source: str
    """Where the data came from: a directory path, or DEMO_SOURCE."""

    @property
    def class_counts(self) -> np.ndarray:
        """Images per class in the train split (after the validation split is carved out)."""
        return np.bincount(self.train_y, minlength=self.num_classes)

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[1])

    @functools.cached_property
    def digests(self) -> dict[str, str]:
        """Content digest of each split (images and labels): equal digests, equal data."""
        return {
            name: fingerprint(getattr(self, f"{name}_x"), getattr(self, f"{name}_y"))
            for name in ("train", "val", "test")
        }


def fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """First 16 hex digits of the SHA-256 of the images' and labels' bytes (about 1 GB/s)."""
    h = hashlib.sha256()
    for array in (images, labels):
        h.update(str((array.shape, array.dtype.str)).encode())
        h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- reading and checking
def _read_npy(path: Path, memory_mapped: bool = False) -> np.ndarray:
    """np.load without pickles, turning every way a file can be broken into one DataError line;
    ``memory_mapped``: read-only and mapped, nothing read until it is indexed."""
    if not path.is_file():
        raise DataError(f"{path}: missing file (expected {', '.join(FILES)} in {path.parent})")
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _fortran_order, dtype = read_header(fh)
            header_end = fh.tell()
    except Exception as err:  # noqa: BLE001 -- any header failure means "not an npy file"
        raise DataError(f"{path}: not a readable .npy file ({err})") from None
    if dtype.hasobject:
        raise DataError(f"{path}: object array (pickled Python objects); save a plain numeric array with np.save")
    expected = header_end + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise DataError(f"{path}: truncated .npy file ({actual} of {expected} bytes for shape {shape} {dtype})")
    try:
        return np.load(path, mmap_mode="r" if memory_mapped else None, allow_pickle=False)
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{path}: unreadable .npy file ({err})") from None


def check_images(x: np.ndarray, path: Path | str) -> np.ndarray:
    """Refuse anything but N x H x W x 3 uint8 with H == W and N > 0."""
    if x.ndim == 3:
        raise DataError(
            f"{path}: shape {x.shape} looks like grayscale N x H x W; expected RGB N x H x W x 3 "
            "(np.repeat(x[..., None], 3, axis=-1))"
        )
    if x.ndim != 4:
        raise DataError(f"{path}: images must have 4 dimensions N x H x W x 3; got shape {x.shape}")
    if x.shape[-1] != 3 and x.shape[1] in (1, 3):
        raise DataError(
            f"{path}: shape {x.shape} is channels-first N x C x H x W; expected channels-last N x H x W x 3 "
            "(np.transpose(x, (0, 2, 3, 1)))"
        )
    if x.shape[-1] == 1:
        raise DataError(f"{path}: shape {x.shape} is grayscale (1 channel); expected RGB N x H x W x 3")
    if x.shape[-1] != 3:
        raise DataError(f"{path}: images must have 3 channels (RGB) in the last axis; got shape {x.shape}")
    if x.shape[0] == 0:
        raise DataError(f"{path}: empty split (0 images)")
    if x.shape[1] != x.shape[2]:
        raise DataError(f"{path}: images must be square (H == W); got {x.shape[1]}x{x.shape[2]}")
    if np.issubdtype(x.dtype, np.floating) and np.isnan(x).any():
        raise DataError(f"{path}: {int(np.isnan(x).sum())} NaN pixel values; expected uint8 0..255")
    if x.dtype != np.uint8:
        raise DataError(f"{path}: pixels are {x.dtype}; expected uint8 0..255 (x.astype(np.uint8) after scaling)")
    return x


def check_labels(y: np.ndarray, path: Path | str, n_images: int, images_path: Path | str) -> np.ndarray:
    """Refuse anything but N non-negative integer labels matching the image count."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{path}: labels must be a 1-D array of N integers; got shape {y.shape}")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: labels are {y.dtype}; expected integers 0..K-1 (y.astype(np.int64))")
    if len(y) != n_images:
        raise DataError(f"{path}: {len(y)} labels but {images_path} has {n_images} images")
    if len(y) == 0:
        raise DataError(f"{path}: empty split (0 labels)")
    if (y < 0).any():
        i = int(np.argmax(y < 0))
        raise DataError(f"{path}: negative label {int(y[i])} at index {i}; expected 0..K-1")
    return y.astype(np.int64)


def load_arrays(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Read and validate the four files; returns train_x, train_y, test_x, test_y and K. The images come
    back memory-mapped (read-only, nothing read yet): ``gather_rows`` copies out what a run uses."""
    paths = {name: directory / name for name in FILES}
    train_x = check_images(_read_npy(paths["train_data.npy"], memory_mapped=True), paths["train_data.npy"])
    train_y = check_labels(
        _read_npy(paths["train_target.npy"]), paths["train_target.npy"], len(train_x), paths["train_data.npy"]
    )
    test_x = check_images(_read_npy(paths["test_data.npy"], memory_mapped=True), paths["test_data.npy"])
    test_y = check_labels(
        _read_npy(paths["test_target.npy"]), paths["test_target.npy"], len(test_x), paths["test_data.npy"]
    )
    return (*check_pair(train_x, train_y, test_x, test_y, paths),)


def check_pair(train_x, train_y, test_x, test_y, paths: dict) -> tuple:
    """Cross-split checks: same image size, contiguous classes, no test class unseen in training."""
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"{paths['test_data.npy']}: images are {test_x.shape[1]}x{test_x.shape[2]} but "
            f"{paths['train_data.npy']} images are {train_x.shape[1]}x{train_x.shape[2]}"
        )
    if int(train_y.max()) >= MAX_CLASSES:
        raise DataError(
            f"{paths['train_target.npy']}: label {int(train_y.max())} is not a class index "
            f"(expected 0..K-1 with K < {MAX_CLASSES})"
        )
    num_classes = int(train_y.max()) + 1
    if num_classes < 2:
        raise DataError(f"{paths['train_target.npy']}: every image is class 0; a classifier needs two classes or more")
    counts = np.bincount(train_y, minlength=num_classes)
    if (counts == 0).any():
        gaps = np.flatnonzero(counts == 0)
        shown = ", ".join(map(str, gaps[:5])) + (" ..." if len(gaps) > 5 else "")
        raise DataError(
            f"{paths['train_target.npy']}: labels out of range: max label {num_classes - 1} but classes "
            f"{shown} have no images; expected contiguous labels 0..K-1"
        )
    few = np.flatnonzero(counts < 2)
    if len(few):
        raise DataError(
            f"{paths['train_target.npy']}: class {int(few[0])} has {int(counts[few[0]])} image; every class "
            "needs two or more (one for the validation split, one to train on)"
        )
    unseen = sorted(set(np.unique(test_y).tolist()) - set(range(num_classes)))
    if unseen:
        raise DataError(
            f"{paths['test_target.npy']}: class(es) {', '.join(map(str, unseen[:5]))} appear in test but "
            f"not in {paths['train_target.npy']} (classes 0..{num_classes - 1})"
        )
    return train_x, train_y, test_x, test_y, num_classes


# ----------------------------------------------------------------------------- split
def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): about ``fraction`` of each class goes to val, at least one when the class
    has two or more images, and every class keeps at least one training image."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in range(int(y.max()) + 1):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = 0 if len(idx) < 2 else int(np.clip(round(fraction * len(idx)), 1, len(idx) - 1))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def gather_rows(images: np.ndarray, index_sets: list[np.ndarray]) -> list[np.ndarray]:
    """``[images[ix] for ix in index_sets]``, each ``ix`` sorted, without a second copy of the file in
    memory: a memory-mapped array is read in file order, ``CHUNK_BYTES`` of rows at a time, by plain
    reads (the pages of a mapping, once touched, would count in the process's memory until it ends).
    The peak is the gathered rows plus one chunk. An in-memory array is indexed directly."""
    if not isinstance(images, np.memmap) or images.filename is None or not images.flags.c_contiguous:
        return [np.asarray(images[ix]) for ix in index_sets]
    row_shape = images.shape[1:]
    row_values = int(np.prod(row_shape))
    row_bytes = row_values * images.dtype.itemsize
    rows_per_chunk = max(1, CHUNK_BYTES // row_bytes)
    outs = [np.empty((len(ix), *row_shape), images.dtype) for ix in index_sets]
    with open(images.filename, "rb") as fh:
        for start in range(0, len(images), rows_per_chunk):
            stop = min(start + rows_per_chunk, len(images))
            fh.seek(images.offset + start * row_bytes)
            chunk = np.fromfile(fh, images.dtype, (stop - start) * row_values).reshape(stop - start, *row_shape)
            for ix, out in zip(index_sets, outs, strict=True):
                lo, hi = np.searchsorted(ix, (start, stop))
                # mode="clip": with the default "raise", numpy writes into a buffer of out's size and copies it (a
                # second chunk at the peak); the indices are in range by construction (searchsorted above)
                np.take(chunk, ix[lo:hi] - start, axis=0, out=out[lo:hi], mode="clip")
            del chunk  # before the next read allocates its own: one chunk at a time, not two
    return outs


# ----------------------------------------------------------------------------- entry point
def resolve_data_dir(data: str | None) -> Path | None:
    """The directory to load, or None for the embedded demo set."""
    if data is not None:
        path = Path(data).expanduser()
        if not path.is_dir():
            raise DataError(f"{path}: not a directory (expected a directory holding {', '.join(FILES)})")
        return path
    default = Path("data")
    return default if any((default / name).exists() for name in FILES) else None


def load_dataset(data: str | None, val_fraction: float = VAL_FRACTION, seed: int = 0) -> Dataset:
    """Load ``data`` (or ./data, or the demo set), validate it and carve the validation split."""
    directory = resolve_data_dir(data)
    if directory is None:
        train_x, train_y, test_x, test_y, num_classes = demo_arrays()
        source = DEMO_SOURCE
    else:
        train_x, train_y, test_x, test_y, num_classes = load_arrays(directory)
        source = str(directory.resolve())
    tr, va = stratified_split(train_y, val_fraction, seed)
    train_images, val_images = gather_rows(train_x, [tr, va])
    (test_images,) = gather_rows(test_x, [np.arange(len(test_x))])
    return Dataset(train_images, train_y[tr], val_images, train_y[va], test_images, test_y, num_classes, source)


class DatasetCache:
    """One loaded dataset per distinct (data, val_fraction, split seed): a study may search any of the
    three, and each run must train on the data and split its configuration names."""

    def __init__(self, size: int = 3):
        self.size = size
        self.entries: OrderedDict[tuple, Dataset] = OrderedDict()

    def get(self, config) -> Dataset:
        """The dataset of ``config.split`` (a ``TrainConfig``), loaded once while it stays in the cache."""
        key = config.split
        if key not in self.entries:
            self.entries[key] = load_dataset(*key)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        self.entries.move_to_end(key)
        return self.entries[key]


def demo_note(data: Dataset) -> str | None:
    """The one line a person reads when no dataset was given and the embedded demo set stands in for it;
    None for a real dataset."""
    if data.source != DEMO_SOURCE:
        return None
    return (
        f"no --data given and ./data holds no dataset: using the {DEMO_SOURCE}, which checks the machinery, "
        "not recipes (docs/long-tailed-data.md)"
    )


def demo_arrays(imbalance: float = 10.0, test_per_class: int = 40, size: int = 32):
    """Deterministic long-tailed RGB set from sklearn's bundled 8x8 digits (1,797 images, no network).

    Test: ``test_per_class`` per class (balanced). Train: class c keeps n_max * imbalance^(-c/(K-1))
    images (CIFAR-10-LT recipe), so class 0 has ``imbalance`` times as many as class 9. Digits are drawn
    in a random foreground colour on a random dark background and upsampled bilinearly to ``size``.
    """
    # Deferred: reading and checking the user's files needs NumPy alone, so `cvstudy train` refuses bad
    # data before torch (seconds to import) is loaded; only the demo set resizes with it.
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    small = torch.from_numpy(digits.images / 16.0).float()[:, None]  # N x 1 x 8 x 8 in [0, 1]
    gray = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()
    fg = rng.uniform(0.55, 1.0, size=(len(gray), 1, 1, 3))
    bg = rng.uniform(0.0, 0.3, size=(len(gray), 1, 1, 3))
    images = np.clip(np.rint(255 * (bg + (fg - bg) * gray[..., None])), 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)

    num_classes = int(labels.max()) + 1
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    n_max = min(len(idx) for idx in per_class) - test_per_class
    train_parts, test_parts = [], []
    for c, idx in enumerate(per_class):
        n_train = int(n_max * imbalance ** (-c / (num_classes - 1)))
        test_parts.append(idx[:test_per_class])
        train_parts.append(idx[test_per_class : test_per_class + n_train])
    train_idx, test_idx = np.concatenate(train_parts), np.concatenate(test_parts)
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], num_classes
