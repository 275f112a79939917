"""lipbench.torch.data: offline, on small files written in the real on-disk formats."""

from __future__ import annotations

import gzip
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from lipbench.errors import DatasetUnavailable, LipbenchError
from lipbench.torch import data
from lipbench.torch.data import DATASETS, Dataset, default_data_root, downloads_allowed, load_dataset


@pytest.fixture(autouse=True)
def _fresh_cache():
    data._load_cached.cache_clear()
    yield
    data._load_cached.cache_clear()


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test on any attempt to open a connection or to run a torchvision download."""
    import torchvision.datasets as tvd

    def refuse(*args, **kwargs):
        raise AssertionError("a network access was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for cls in (tvd.MNIST, tvd.FashionMNIST, tvd.CIFAR10, tvd.CIFAR100):
        monkeypatch.setattr(cls, "download", refuse)


def _per_channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3), correction=0)


def _assert_standardised(ds: Dataset) -> None:
    mean, std = _per_channel_stats(ds.x_train)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-4)
    assert torch.allclose(std, torch.ones_like(std), atol=1e-4)


def _standardise_like(raw_train: np.ndarray, raw: np.ndarray) -> torch.Tensor:
    """What the loader should return for ``raw`` (N x C x H x W), with ``raw_train``'s statistics."""
    train = torch.from_numpy(raw_train.astype(np.float64))
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True, correction=0)
    return ((torch.from_numpy(raw.astype(np.float64)) - mean) / std).float()


# --- small files in the real formats -------------------------------------------------------------


def _idx_bytes(array: np.ndarray) -> bytes:
    """uint8 IDX: two zero bytes, type 0x08, ndim, big-endian int32 sizes, then the data."""
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _mnist_arrays(seed: int, n_train: int = 12, n_test: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def _write_idx(directory: Path, arrays: dict[str, np.ndarray], gzipped: bool = False) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        if gzipped:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(_idx_bytes(array)))
        else:
            (directory / stem).write_bytes(_idx_bytes(array))


def _check_mnist_like(ds: Dataset, arrays: dict[str, np.ndarray]) -> None:
    x_train = arrays["train-images-idx3-ubyte"][:, None]
    x_test = arrays["t10k-images-idx3-ubyte"][:, None]
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (5, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    torch.testing.assert_close(ds.x_train, _standardise_like(x_train, x_train), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ds.x_test, _standardise_like(x_train, x_test), atol=1e-5, rtol=1e-5)
    _assert_standardised(ds)


def _cifar_arrays(n_per_batch: int, batches: int, classes: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "data": rng.integers(0, 256, (n_per_batch, 3 * 32 * 32), dtype=np.uint8),
            "labels": rng.integers(0, classes, n_per_batch).tolist(),
        }
        for _ in range(batches)
    ]


def _pickle(path: Path, obj: dict) -> None:
    path.write_bytes(pickle.dumps(obj))


@pytest.fixture
def skip_cifar_md5(monkeypatch):
    """Test only: torchvision checks the md5 of every CIFAR file (batches in ``_check_integrity``,
    the meta file in ``_load_meta``), so small fake files are let through by checking existence only."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: Path(fpath).is_file())


def _as_nchw(batch_data: np.ndarray) -> np.ndarray:
    return batch_data.reshape(-1, 3, 32, 32)  # CIFAR rows are 1024 R, then G, then B values


# --- registry, environment -----------------------------------------------------------------------


def test_registry_and_unknown_name() -> None:
    assert DATASETS == ("mnist", "fashion-mnist", "cifar10", "cifar100", "digits", "synthetic")
    with pytest.raises(ValueError, match=r"Unknown dataset 'mnsit'\. Did you mean: mnist\?"):
        load_dataset("mnsit")


@pytest.mark.parametrize(("value", "allowed"), [("1", False), ("TRUE", False), ("yes", False), ("0", True)])
def test_downloads_allowed(monkeypatch, value: str, allowed: bool) -> None:
    monkeypatch.setenv("LIPBENCH_OFFLINE", value)
    assert downloads_allowed() is allowed
    monkeypatch.delenv("LIPBENCH_OFFLINE")
    assert downloads_allowed()


def test_default_data_root(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LIPBENCH_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.delenv("LIPBENCH_DATA")
    assert default_data_root().parts[-1] == "data" and "lipbench" in str(default_data_root())


# --- digits, synthetic ---------------------------------------------------------------------------


def test_digits() -> None:
    ds = load_dataset("digits")
    assert ds.name == "digits" and ds.num_classes == 10 and ds.input_shape == (1, 8, 8)
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert set(ds.y_train.tolist()) == set(range(10)) == set(ds.y_test.tolist())
    _assert_standardised(ds)
    # The split is fixed: the seed does not move it, and a fresh load gives the same tensors.
    assert load_dataset("digits", seed=7) is ds
    data._load_cached.cache_clear()
    again = load_dataset("digits")
    assert again is not ds and torch.equal(again.x_train, ds.x_train) and torch.equal(again.y_test, ds.y_test)
    small = load_dataset("digits", train_size=100, test_size=10)
    assert torch.equal(small.y_train, ds.y_train[:100]) and torch.equal(small.y_test, ds.y_test[:10])
    _assert_standardised(small)


def test_subset_larger_than_available() -> None:
    with pytest.raises(ValueError, match=r"`train_size` is 5000 but digits has only 1437"):
        load_dataset("digits", train_size=5000)
    with pytest.raises(ValueError, match=r"`test_size`"):
        load_dataset("synthetic", synthetic_size=40, test_size=11)


def test_synthetic_shapes_and_seeds() -> None:
    kwargs = {"synthetic_shape": (3, 32, 32), "synthetic_classes": 100, "synthetic_size": 400}
    ds = load_dataset("synthetic", seed=1, **kwargs)
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 100
    assert ds.x_train.shape == (400, 3, 32, 32) and ds.x_test.shape == (100, 3, 32, 32)
    assert ds.y_train.dtype == torch.int64 and int(ds.y_train.max()) < 100
    _assert_standardised(ds)
    data._load_cached.cache_clear()
    same = load_dataset("synthetic", seed=1, **kwargs)
    assert torch.equal(same.x_train, ds.x_train) and torch.equal(same.y_test, ds.y_test)
    other = load_dataset("synthetic", seed=2, **kwargs)
    assert not torch.equal(other.x_train, ds.x_train)
    assert load_dataset("synthetic", synthetic_shape=[1, 4, 4], synthetic_size=8).x_test.shape == (2, 1, 4, 4)


def test_synthetic_is_learnable() -> None:
    ds = load_dataset("synthetic", seed=0)
    x_train, x_test = ds.x_train.flatten(1), ds.x_test.flatten(1)
    weight = torch.zeros(x_train.shape[1], ds.num_classes, requires_grad=True)
    losses = []
    for _ in range(20):  # plain gradient descent on a linear classifier (torch.optim is slow to import)
        loss = torch.nn.functional.cross_entropy(x_train @ weight, ds.y_train)
        (grad,) = torch.autograd.grad(loss, weight)
        with torch.no_grad():
            weight -= 0.5 * grad
        losses.append(loss.item())
    accuracy = ((x_test @ weight).argmax(1) == ds.y_test).float().mean().item()
    assert losses[-1] < 0.5 * losses[0] and accuracy > 0.5


def test_to_and_cache() -> None:
    ds = load_dataset("synthetic", synthetic_size=16)
    moved = ds.to("cpu")
    assert isinstance(moved, Dataset) and moved.x_train.device.type == "cpu"
    assert moved.input_shape == ds.input_shape and torch.equal(moved.y_test, ds.y_test)
    assert load_dataset("synthetic", synthetic_size=16) is ds


# --- torchvision layouts -------------------------------------------------------------------------


def test_mnist_from_torchvision_layout(tmp_path: Path, no_network) -> None:
    # torchvision's MNIST only checks that the four uncompressed files exist in <root>/MNIST/raw.
    arrays = _mnist_arrays(seed=0)
    _write_idx(tmp_path / "MNIST" / "raw", arrays)
    ds = load_dataset("mnist", root=tmp_path, download=False)
    assert ds.name == "mnist"
    _check_mnist_like(ds, arrays)
    assert load_dataset("mnist", root=tmp_path, download=False, train_size=3).x_train.shape[0] == 3
    # Files on disk: download=True neither downloads nor loads a second copy.
    assert load_dataset("mnist", root=tmp_path, download=True) is ds


def test_fashion_mnist_torchvision_layout_comes_first(tmp_path: Path, monkeypatch, no_network) -> None:
    arrays = _mnist_arrays(seed=1)
    _write_idx(tmp_path / "FashionMNIST" / "raw", arrays)
    debian = tmp_path / "debian"
    _write_idx(debian, _mnist_arrays(seed=2), gzipped=True)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", debian)
    _check_mnist_like(load_dataset("fashion-mnist", root=tmp_path, download=False), arrays)


def test_fashion_mnist_from_debian_dir(tmp_path: Path, monkeypatch, no_network) -> None:
    arrays = _mnist_arrays(seed=3)
    debian = tmp_path / "debian"
    _write_idx(debian, arrays, gzipped=True)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", debian)
    _check_mnist_like(load_dataset("fashion_mnist", root=tmp_path / "empty", download=False), arrays)


@pytest.mark.skipif(
    not (data.DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="the Debian package dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist_from_debian_package(tmp_path: Path, no_network) -> None:
    ds = load_dataset("fashion-mnist", root=tmp_path, download=False)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.num_classes == 10 and sorted(set(ds.y_train.tolist())) == list(range(10))
    _assert_standardised(ds)


def test_cifar10_from_torchvision_layout(tmp_path: Path, skip_cifar_md5, no_network) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = _cifar_arrays(n_per_batch=4, batches=6, classes=10, seed=4)
    for i, batch in enumerate(batches[:5], start=1):
        _pickle(folder / f"data_batch_{i}", batch)
    _pickle(folder / "test_batch", batches[5])
    _pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})

    ds = load_dataset("cifar10", root=tmp_path, download=False)
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert ds.y_train.tolist() == [label for b in batches[:5] for label in b["labels"]]
    assert ds.y_test.tolist() == batches[5]["labels"]
    raw_train = _as_nchw(np.concatenate([b["data"] for b in batches[:5]]))
    torch.testing.assert_close(ds.x_train, _standardise_like(raw_train, raw_train), atol=1e-5, rtol=1e-5)
    raw_test = _as_nchw(batches[5]["data"])
    torch.testing.assert_close(ds.x_test, _standardise_like(raw_train, raw_test), atol=1e-5, rtol=1e-5)
    _assert_standardised(ds)


def test_cifar100_from_torchvision_layout(tmp_path: Path, skip_cifar_md5, no_network) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train, test = _cifar_arrays(n_per_batch=6, batches=2, classes=100, seed=5)
    for split, name in ((train, "train"), (test, "test")):
        _pickle(folder / name, {"data": split["data"], "fine_labels": split["labels"]})
    _pickle(folder / "meta", {"fine_label_names": [f"class{i}" for i in range(100)]})

    ds = load_dataset("cifar100", root=tmp_path, download=False, test_size=2)
    assert ds.num_classes == 100 and ds.x_train.shape == (6, 3, 32, 32) and ds.x_test.shape == (2, 3, 32, 32)
    assert ds.y_train.tolist() == train["labels"] and ds.y_test.tolist() == test["labels"][:2]
    raw_train = _as_nchw(train["data"])
    torch.testing.assert_close(ds.x_test, _standardise_like(raw_train, _as_nchw(test["data"][:2])))


# --- missing data --------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-py")])
def test_missing_with_download_false(tmp_path: Path, no_network, name: str, folder: str) -> None:
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset(name, root=tmp_path, download=False)
    message = str(info.value)
    assert isinstance(info.value, LipbenchError) and "\n" not in message
    assert f"'{name}'" in message and str(tmp_path / folder) in message
    assert "download=True" in message and info.value.__cause__ is None


def test_missing_offline_makes_no_network_attempt(tmp_path: Path, monkeypatch, no_network) -> None:
    monkeypatch.setenv("LIPBENCH_OFFLINE", "1")
    monkeypatch.setenv("LIPBENCH_DATA", str(tmp_path))
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset("fashion-mnist")
    message = str(info.value)
    assert "'fashion-mnist'" in message and "LIPBENCH_OFFLINE unset" in message
    assert str(tmp_path / "no-debian") in message and "apt-get install dataset-fashion-mnist" in message


def test_failed_download_is_one_line(tmp_path: Path, monkeypatch) -> None:
    from urllib.error import URLError

    import torchvision.datasets as tvd

    def fail(self):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tvd.CIFAR10, "download", fail)
    with pytest.raises(DatasetUnavailable, match=r"failed \(<urlopen error .*Name or service") as info:
        load_dataset("cifar10", root=tmp_path, download=True)
    assert "\n" not in str(info.value) and info.value.__cause__ is None
