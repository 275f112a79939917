"""Datasets as whole tensors: loaded once per process, standardised with train statistics.

The image sets are read through torchvision's on-disk layout (``<root>/MNIST/raw``,
``<root>/cifar-10-batches-py`` ...), but never through a DataLoader: the uint8 arrays are
converted in one step, so a run's data sits on its device as four tensors. Fashion-MNIST is
also read from the Debian package ``dataset-fashion-mnist``. ``digits`` (scikit-learn's bundled
8x8 digits) and ``synthetic`` need neither disk nor network.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lipbench.errors import DatasetUnavailable
from lipbench.registry import DATASETS

#: Where the Debian package ``dataset-fashion-mnist`` puts the four gzipped IDX files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# Fixed so that the digits split never depends on a run's seed.
_DIGITS_SPLIT_SEED = 1797
_DIGITS_TRAIN = 1437

_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
# name -> (torchvision class name, folder under root that holds its files, number of classes)
_TORCHVISION = {
    "mnist": ("MNIST", "MNIST/raw", 10),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST/raw", 10),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", 10),
    "cifar100": ("CIFAR100", "cifar-100-python", 100),
}
_CACHE_SIZE = 8


@dataclass(frozen=True)
class Dataset:
    """A train/test split as CPU or device tensors; treat the tensors as read-only (they are cached)."""

    name: str
    x_train: torch.Tensor  # float32, N x C x H x W, standardised per channel with train statistics
    y_train: torch.Tensor  # int64, N
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one sample."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    def to(self, device: torch.device | str) -> Dataset:
        """A new Dataset with all four tensors on ``device``."""
        return dataclasses.replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )


def default_data_root() -> Path:
    """``$LIPBENCH_DATA`` if set, else the user's cache directory for lipbench."""
    env = os.environ.get("LIPBENCH_DATA")
    if env:
        return Path(env).expanduser()
    try:
        import platformdirs
    except ImportError:
        return Path.home() / ".cache" / "lipbench" / "data"
    return Path(platformdirs.user_cache_dir("lipbench")) / "data"


def downloads_allowed() -> bool:
    """False when ``$LIPBENCH_OFFLINE`` is 1, true or yes (any case)."""
    return os.environ.get("LIPBENCH_OFFLINE", "").strip().lower() not in ("1", "true", "yes")


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    download: bool | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
    synthetic_shape: tuple[int, int, int] = (1, 8, 8),
    synthetic_classes: int = 10,
    synthetic_size: int = 2048,
    seed: int = 0,
) -> Dataset:
    """Load ``name`` as CPU tensors, from this process's cache when the same arguments came before.

    ``download=None`` follows :func:`downloads_allowed`, ``root=None`` is :func:`default_data_root`.
    ``train_size``/``test_size`` keep a prefix of each split; statistics come from the kept train part.
    ``seed`` and the ``synthetic_*`` arguments only matter for ``synthetic``.
    Raises DatasetUnavailable when the files are missing and cannot be downloaded.
    """
    key = name.strip().lower().replace("_", "-")
    if key not in DATASETS:
        close = difflib.get_close_matches(key, DATASETS, n=1)
        hint = f" Did you mean: {close[0]}?" if close else ""
        raise ValueError(f"Unknown dataset {name!r}.{hint} Available: {', '.join(DATASETS)}.")
    for arg, value in (("train_size", train_size), ("test_size", test_size)):
        if value is not None and value < 1:
            raise ValueError(f"`{arg}` must be a positive integer or None, got {value}.")
    explicit_download = download is not None
    download = downloads_allowed() if download is None else bool(download)
    root_path = (Path(root).expanduser() if root is not None else default_data_root()).resolve()

    # Arguments that cannot change the result are normalised so they do not split the cache.
    shape, classes, size, seed_key = (1, 8, 8), 10, 2048, 0
    if key == "synthetic":
        shape = tuple(int(d) for d in synthetic_shape)
        classes, size, seed_key = int(synthetic_classes), int(synthetic_size), int(seed)
        _check_synthetic(shape, classes, size)
    if key in ("digits", "synthetic"):
        root_str, debian = "", ""
    else:
        root_str = str(root_path)
        debian = str(DEBIAN_FASHION_MNIST_DIR) if key == "fashion-mnist" else ""

    args = (train_size, test_size, shape, classes, size, seed_key)
    try:
        # Files already on disk load the same with or without download, so look there first: one
        # cache entry per dataset, whichever way `download` was set.
        return _load_cached(key, root_str, False, debian, *args)
    except _Missing as missing:
        if not download:
            raise _unavailable(key, root_path, missing, explicit_download) from None
    try:
        return _load_cached(key, root_str, True, debian, *args)
    except _Missing as missing:
        raise _unavailable(key, root_path, missing, explicit_download) from None


def _check_synthetic(shape: tuple[int, ...], classes: int, size: int) -> None:
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"`synthetic_shape` must be three positive integers (C, H, W), got {shape}.")
    if classes < 2:
        raise ValueError(f"`synthetic_classes` must be at least 2, got {classes}.")
    if size < 4:
        raise ValueError(f"`synthetic_size` must be at least 4 (the test split is a quarter), got {size}.")


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _load_cached(
    name: str,
    root: str,
    download: bool,
    debian: str,
    train_size: int | None,
    test_size: int | None,
    shape: tuple[int, int, int],
    classes: int,
    size: int,
    seed: int,
) -> Dataset:
    if name == "digits":
        x_train, y_train, x_test, y_test = _digits()
        num_classes = 10
    elif name == "synthetic":
        x_train, y_train, x_test, y_test = _synthetic(shape, classes, size, seed)
        num_classes = classes
    else:
        x_train, y_train, x_test, y_test = _from_disk(name, Path(root), download, debian)
        num_classes = _TORCHVISION[name][2]
    x_train, y_train = _prefix(x_train, y_train, train_size, "train_size", name)
    x_test, y_test = _prefix(x_test, y_test, test_size, "test_size", name)
    x_train, x_test = _standardise(x_train, x_test)
    return Dataset(name, x_train, y_train.long(), x_test, y_test.long(), num_classes)


def _prefix(x: torch.Tensor, y: torch.Tensor, n: int | None, arg: str, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if n is None:
        return x, y
    if n > len(x):
        raise ValueError(f"`{arg}` is {n} but {name} has only {len(x)} samples in that split.")
    return x[:n], y[:n]


def _standardise(x_train: torch.Tensor, x_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 copies with zero mean and unit std per channel on the train split, the test split alike.

    Raw uint8 pixels go in: dividing by 255 first would change nothing after standardising.
    """
    # copy=True: a prefix must not keep the full split alive, and the sub_/div_ below stay on our copy.
    x_train = x_train.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    x_test = x_test.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True, correction=0).clamp_min(1e-8)
    return x_train.sub_(mean).div_(std), x_test.sub_(mean).div_(std)


def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32)).unsqueeze(1)  # N x 1 x 8 x 8
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(_DIGITS_SPLIT_SEED))
    train, test = order[:_DIGITS_TRAIN], order[_DIGITS_TRAIN:]
    return x[train], y[train], x[test], y[test]


def _synthetic(
    shape: tuple[int, int, int], classes: int, size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian clusters around one random prototype image per class, so a net can learn it."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(classes, *shape, generator=g)
    splits = []
    for n in (size, size // 4):
        y = torch.randint(0, classes, (n,), generator=g)
        x = prototypes[y] + torch.randn(n, *shape, generator=g)
        splits += [x, y]
    return splits[0], splits[1], splits[2], splits[3]


class _Missing(Exception):
    """Internal: the files were not found (``reason`` set when a download was tried and failed)."""

    def __init__(self, looked: list[Path], reason: str | None = None) -> None:
        super().__init__(reason)
        self.looked, self.reason = looked, reason


def _unavailable(name: str, root: Path, missing: _Missing, explicit_download: bool) -> DatasetUnavailable:
    layout = root / _TORCHVISION[name][1]
    where = " and ".join(str(p) for p in missing.looked)
    debian = " or `apt-get install dataset-fashion-mnist`" if name == "fashion-mnist" else ""
    if missing.reason is None:
        how = "pass download=True" if explicit_download else "run with LIPBENCH_OFFLINE unset"
        return DatasetUnavailable(
            f"Dataset '{name}' is not in {where} and downloads are off: {how} to download it into "
            f"{root}, or put the torchvision files under {layout}{debian}."
        )
    return DatasetUnavailable(
        f"Dataset '{name}' is not in {where} and downloading it into {root} failed ({missing.reason}): "
        f"retry with network access, or put the torchvision files under {layout}{debian}."
    )


def _from_disk(
    name: str, root: Path, download: bool, debian: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    looked = [root / _TORCHVISION[name][1]]
    if name == "fashion-mnist":
        # Search order: torchvision layout under root, the Debian package, then a download.
        try:
            return _torchvision(name, root, download=False)
        except _Missing:
            pass
        if debian:
            looked.append(Path(debian))
            found = _read_idx_dir(Path(debian))
            if found is not None:
                return found
        if not download:
            raise _Missing(looked)
    try:
        return _torchvision(name, root, download)
    except _Missing as missing:
        raise _Missing(looked, missing.reason) from None


def _torchvision(
    name: str, root: Path, download: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    import torchvision.datasets

    cls = getattr(torchvision.datasets, _TORCHVISION[name][0])
    try:
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=download)
    # "Dataset not found" is a RuntimeError; a failed download a RuntimeError, URLError or other OSError.
    except (RuntimeError, OSError) as exc:
        raise _Missing([], _one_line(exc) if download else None) from None
    return _images(train.data), _labels(train.targets), _images(test.data), _labels(test.targets)


def _one_line(exc: BaseException) -> str:
    # torchvision's MNIST joins one error per mirror; the last line is the error itself.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _images(data: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 N x H x W (MNIST family) or N x H x W x C (CIFAR) -> a uint8 N x C x H x W view."""
    x = torch.as_tensor(data)
    return x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)


def _labels(targets: torch.Tensor | list[int]) -> torch.Tensor:
    return torch.as_tensor(targets, dtype=torch.int64)


def _read_idx_dir(directory: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The four MNIST-format files (gzipped or not) from ``directory``, or None if any is missing."""
    paths = {}
    for key, stem in _IDX_FILES.items():
        for candidate in (directory / f"{stem}.gz", directory / stem):
            if candidate.is_file():
                paths[key] = candidate
                break
        else:
            return None
    arrays = {key: _read_idx(path) for key, path in paths.items()}
    return (
        _images(arrays["x_train"]),
        _labels(arrays["y_train"]),
        _images(arrays["x_test"]),
        _labels(arrays["y_test"]),
    )


def _read_idx(path: Path) -> np.ndarray:
    """One uint8 IDX file: 2 zero bytes, type 0x08, ndim, ndim big-endian int32 sizes, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = bytearray(f.read())  # writable, so torch.as_tensor does not warn
    if len(raw) < 4 or raw[0:3] != b"\x00\x00\x08":
        raise DatasetUnavailable(f"{path} is not a uint8 IDX file: reinstall it or delete it to fall back.")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4).astype(np.int64)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DatasetUnavailable(f"{path} is truncated: it holds {data.size} bytes for shape {tuple(dims)}.")
    return data.reshape(tuple(dims))
