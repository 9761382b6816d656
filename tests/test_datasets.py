"""The CIFAR-10 loader: the built-in mini set, the sha256 check, and missing full data."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from dpcompile.datasets import CIFAR10_CLASSES, DATA_DIR, load_cifar10


@pytest.mark.parametrize("split, per_class", [("train", 500), ("test", 100)])
def test_mini_split_shapes_and_labels(split: str, per_class: int) -> None:
    """Mini train has 500 images a class, mini test 100, as float32 N×3×32×32 with int64 labels."""
    images, labels = load_cifar10(split).tensors
    n = per_class * len(CIFAR10_CLASSES)
    assert images.shape == (n, 3, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert torch.bincount(labels, minlength=10).tolist() == [per_class] * 10
    assert torch.isfinite(images).all()


def test_mini_images_are_real_and_normalised() -> None:
    """Real photos: pixels vary within and across images, and per-channel stats are near 0 / 1."""
    images, labels = load_cifar10("train").tensors
    assert images.flatten(1).std(dim=1).min() > 0.05  # no constant image
    assert not torch.equal(images[0], images[1])
    mean, std = images.mean(dim=(0, 2, 3)), images.std(dim=(0, 2, 3))
    assert mean.abs().max() < 0.1 and (std - 1).abs().max() < 0.1
    # Sorted entries: labels come out grouped in class order.
    assert torch.equal(labels, torch.arange(10).repeat_interleave(500))


def test_cached_load_returns_same_tensors() -> None:
    """A second load is served from memory."""
    assert load_cifar10("test").tensors[0] is load_cifar10("test").tensors[0]


def test_corrupted_archive_is_refused(tmp_path: Path) -> None:
    """A zip whose sha256 differs from the known release is refused before decoding."""
    src = DATA_DIR / "cifar10-mini-test.zip"
    dst = tmp_path / "cifar10-test.zip"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for i, info in enumerate(zin.infolist()):
            data = zin.read(info)
            if i == 0:
                data = data[:-3] + b"\x00\x00\x00"
            zout.writestr(info, data)
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_cifar10("test", size="full", root=tmp_path)


def test_flipped_byte_archive_is_refused(tmp_path: Path) -> None:
    """A byte-for-byte copy with one byte flipped is refused too."""
    dst = tmp_path / "cifar10-train.zip"
    shutil.copyfile(DATA_DIR / "cifar10-mini-train.zip", dst)
    raw = bytearray(dst.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    dst.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_cifar10("train", size="full", root=tmp_path)


def test_missing_full_data_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the full archives, the error names where it looked."""
    with pytest.raises(FileNotFoundError, match="cifar10-train.zip"):
        load_cifar10("train", size="full", root=tmp_path)
    monkeypatch.setenv("DPCOMPILE_CIFAR10_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_cifar10("test", size="full")


def test_bad_arguments() -> None:
    """Unknown split or size, or root with the mini set, are refused."""
    with pytest.raises(ValueError, match="split"):
        load_cifar10("val")
    with pytest.raises(ValueError, match="size"):
        load_cifar10("train", size="medium")
    with pytest.raises(ValueError, match="root"):
        load_cifar10("train", root="/tmp")
