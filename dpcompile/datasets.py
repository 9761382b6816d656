"""CIFAR-10 from JPEG zip archives: a built-in mini copy, or the full set from a folder."""
from __future__ import annotations

import hashlib
import io
import os
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import TensorDataset

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

SPLITS = ("train", "test")
SIZES = ("mini", "full")
ENV_VAR = "DPCOMPILE_CIFAR10_DIR"
DEFAULT_FULL_DIR = Path("..") / "shared" / "data" / "cifar10"
DATA_DIR = Path(__file__).resolve().parent / "data"

SHA256: dict[str, str] = {
    "cifar10-train.zip": "7535619d681ecae959b6925f0fac250eda93d92f637e12d065098d49ceaebdd4",
    "cifar10-test.zip": "c85d24bcf53f877447467edb08f30fc388d175fa00514667e43491e557f53606",
    "cifar10-mini-train.zip": "00e3011318f83f64d3e92b0b51351e6c6318c3b0bc7ba3bb02f95f326ca04e86",
    "cifar10-mini-test.zip": "5c01a42cad8a8349107b6094117ddb31f8df7d70a0c7b38d1b4d923914650a2b",
}


def load_cifar10(split: str = "train", *, size: str = "mini", root: str | Path | None = None) -> TensorDataset:
    """CIFAR-10 as (float32 N×3×32×32 normalised images, int64 labels); cached, shared: don't modify in place."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if size == "mini":
        if root is not None:
            raise ValueError("root is only used with size='full'; the mini set is built into dpcompile")
        path = DATA_DIR / f"cifar10-mini-{split}.zip"
    else:
        path = Path(_full_root(root), f"cifar10-{split}.zip").resolve()
    images, labels = _load_zip(split, str(path), *_stamp(path))
    return TensorDataset(images, labels)


def _full_root(root: str | Path | None) -> Path:
    """The full archives' folder: root, else $DPCOMPILE_CIFAR10_DIR, else ../shared/data/cifar10."""
    if root is not None:
        return Path(root)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else Path.cwd() / DEFAULT_FULL_DIR


def _stamp(path: Path) -> tuple[int, int]:
    """(mtime_ns, size) of path, so the cache notices a replaced file; FileNotFoundError names the place."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"CIFAR-10 archive not found: looked for {path} (pass root=..., or set {ENV_VAR} to the folder "
            f"holding cifar10-train.zip and cifar10-test.zip)") from None
    return st.st_mtime_ns, st.st_size


@lru_cache(maxsize=8)
def _load_zip(split: str, path: str, mtime_ns: int, nbytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Check the archive's sha256, decode its JPEGs in sorted order, normalise."""
    name = Path(path).name
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    expected = SHA256.get(name)
    if expected is None:
        raise ValueError(f"{path}: unknown archive name {name!r}; expected one of {sorted(SHA256)}")
    if digest != expected:
        raise ValueError(
            f"{path}: sha256 mismatch (got {digest}, expected {expected}); the archive is corrupted or not "
            "the known CIFAR-10 release, refusing to load it")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        entries = sorted(n for n in zf.namelist() if n.lower().endswith(".jpg"))
        if not entries:
            raise ValueError(f"{path}: no .jpg entries")
        pixels = np.empty((len(entries), 32, 32, 3), dtype=np.uint8)
        labels = np.empty(len(entries), dtype=np.int64)
        for i, entry in enumerate(entries):
            parts = entry.split("/")
            if len(parts) != 3 or parts[0] != split or parts[1] not in CIFAR10_CLASSES:
                raise ValueError(f"{path}: unexpected entry {entry!r}; expected {split}/<class>/NNNN.jpg")
            labels[i] = CIFAR10_CLASSES.index(parts[1])
            with Image.open(io.BytesIO(zf.read(entry))) as img:
                rgb = img.convert("RGB")
            if rgb.size != (32, 32):
                raise ValueError(f"{path}: {entry} is {rgb.size[0]}×{rgb.size[1]}, expected 32×32")
            pixels[i] = np.asarray(rgb)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    images = images.sub_(mean).div_(std)
    return images, torch.from_numpy(labels)
