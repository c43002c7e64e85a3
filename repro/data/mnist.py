"""MNIST as in the Omnigrok / Grokfast reference script (`main_mnist.py`).

The reference does::

    train = torchvision.datasets.MNIST(root, train=True, transform=ToTensor(), download=...)
    test = torchvision.datasets.MNIST(root, train=False, transform=ToTensor(), download=...)
    train = torch.utils.data.Subset(train, range(train_points))

i.e. the FIRST `train_points` training images and the full 10k test set, pixels in [0, 1]
(ToTensor: uint8 / 255, no normalisation). The model flattens them to 784 features.

Here the same numbers are produced without the per-sample PIL path: torchvision's
`MNIST(download=False)` reads the idx files into `dataset.data` (uint8, N x 28 x 28) and
`dataset.targets` (int64); `data.float() / 255` is bitwise what ToTensor returns.

Where the idx files are looked for (first match wins):
  1. `<data_dir>/mnist/MNIST/raw/` then `<data_dir>/MNIST/raw/`, uncompressed: used in place;
  2. the same folders with the files gzipped (`*.gz`, the layout of the shared data copy):
     decompressed once into `cache_dir("mnist")/<source>/MNIST/raw/` (originals untouched);
  3. `download=True`: torchvision's own download into `<data_dir>/mnist`.
"""
from __future__ import annotations

import gzip
import os
import shutil
import struct
import zlib
from pathlib import Path

import torch

from repro.data.paths import cache_dir, source_key
from repro.errors import UserError

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
N_TRAIN_FULL = 60000
N_TEST = 10000
HOW_TO_GET = (
    "put the four idx files (gzipped or not) in <data_dir>/mnist/MNIST/raw/, "
    "pass --data_dir / set GROKFAST_DATA_DIR, or use --download"
)


def _candidate_raw_dirs(data_dir: Path) -> list[tuple[Path, Path]]:
    """(torchvision root, root/MNIST/raw) pairs, in search order."""
    return [(data_dir / "mnist", data_dir / "mnist" / "MNIST" / "raw"), (data_dir, data_dir / "MNIST" / "raw")]


def _expected_idx_size(header: bytes) -> int | None:
    """Size in bytes implied by an idx header (uint8 payload), or None if the header is bad."""
    if len(header) < 8:
        return None
    magic = struct.unpack(">I", header[:4])[0]
    nd, ty = magic % 256, (magic // 256) % 256
    if magic >> 16 != 0 or ty != 0x08 or not 1 <= nd <= 3 or len(header) < 4 * (nd + 1):
        return None
    dims = struct.unpack(f">{nd}I", header[4 : 4 * (nd + 1)])
    size = 4 * (nd + 1)
    n = 1
    for d in dims:
        n *= d
    return size + n


def _check_idx(path: Path) -> None:
    """UserError (one line) unless `path` is a complete uint8 idx file."""
    try:
        with open(path, "rb") as f:
            header = f.read(16)
        actual = path.stat().st_size
    except OSError as e:
        raise UserError(f"MNIST file {path} cannot be read: {e.strerror or e}") from None
    expected = _expected_idx_size(header)
    if expected is None:
        raise UserError(f"MNIST file {path} is corrupt (not an idx uint8 file); replace it ({HOW_TO_GET})")
    if actual != expected:
        raise UserError(
            f"MNIST file {path} is truncated or corrupt ({actual} bytes, header says {expected}); "
            f"replace it ({HOW_TO_GET})"
        )


def _gz_isize(gz_path: Path) -> int | None:
    """Uncompressed size mod 2**32 from the gzip trailer (None if the file is too short)."""
    try:
        with open(gz_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() < 18:
                return None
            f.seek(-4, os.SEEK_END)
            return struct.unpack("<I", f.read(4))[0]
    except OSError:
        return None


def _gunzip(gz_path: Path, out_path: Path) -> None:
    """Decompress gz_path to out_path atomically; skip when out_path already has the right size."""
    isize = _gz_isize(gz_path)
    if out_path.is_file() and isize is not None and out_path.stat().st_size % 2**32 == isize:
        try:
            _check_idx(out_path)
            return
        except UserError:
            pass  # a stale/bad cached copy: rebuild it
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        with gzip.open(gz_path, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    except (EOFError, OSError, zlib.error) as e:
        tmp.unlink(missing_ok=True)
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"MNIST file {gz_path} is truncated or corrupt ({msg}); replace it ({HOW_TO_GET})"
        ) from None
    try:
        _check_idx(tmp)
    except UserError:
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"MNIST file {gz_path} is truncated or corrupt (its content is not a complete idx file); "
            f"replace it ({HOW_TO_GET})"
        ) from None
    os.replace(tmp, out_path)


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.is_file() and dst.stat().st_size == src.stat().st_size:
        return
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(src.resolve(), tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def find_mnist_root(data_dir: str | os.PathLike) -> Path | None:
    """A torchvision root whose MNIST/raw/ holds the four uncompressed idx files, or None.

    Gzipped copies are decompressed into the cache folder (the data folder is never written).
    """
    data_dir = Path(data_dir)
    for root, raw in _candidate_raw_dirs(data_dir):
        plain = [raw / name for name in RAW_FILES]
        if all(p.is_file() for p in plain):
            for p in plain:
                _check_idx(p)
            return root
        sources = []
        for name in RAW_FILES:
            p, gz = raw / name, raw / f"{name}.gz"
            sources.append(p if p.is_file() else gz if gz.is_file() else None)
        if all(s is not None for s in sources):
            cache_root = cache_dir("mnist") / source_key(raw)
            cache_raw = cache_root / "MNIST" / "raw"
            cache_raw.mkdir(parents=True, exist_ok=True)
            for name, src in zip(RAW_FILES, sources):
                if src.suffix == ".gz":
                    _gunzip(src, cache_raw / name)
                else:
                    _check_idx(src)
                    _link_or_copy(src, cache_raw / name)
            return cache_root
    return None


def _torchvision_mnist(root: Path, train: bool, download: bool):
    import torchvision  # local import: only MNIST needs it

    raw = root / "MNIST" / "raw"
    try:
        return torchvision.datasets.MNIST(str(root), train=train, download=download)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the library raises assorted types for bad files
        msg = " ".join(str(e).split()) or type(e).__name__
        if download:
            raise UserError(
                f"MNIST download into {raw} failed ({msg[:300]}); put the four idx files (gzipped or not) "
                f"in <data_dir>/mnist/MNIST/raw/ and pass --data_dir / set GROKFAST_DATA_DIR"
            ) from None
        prefix = "train" if train else "t10k"
        raise UserError(
            f"MNIST files {raw}/{prefix}-*-idx*-ubyte could not be read ({type(e).__name__}: {msg[:200]}); "
            f"replace them ({HOW_TO_GET})"
        ) from None


def load_mnist(
    data_dir: str | os.PathLike, train_points: int = 1000, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): x float32 (n, 784) in [0, 1], y int64.

    x_train / y_train are the FIRST `train_points` training images (reference: Subset(train,
    range(train_points))); the test tensors are the full 10k test set.
    """
    if not isinstance(train_points, int) or isinstance(train_points, bool) or not 1 <= train_points <= N_TRAIN_FULL:
        raise UserError(f"train_points must be an integer in [1, {N_TRAIN_FULL}], got {train_points!r}")
    data_dir = Path(data_dir)
    root = find_mnist_root(data_dir)
    if root is None:
        if not download:
            looked = ", ".join(str(raw) for _, raw in _candidate_raw_dirs(data_dir))
            raise UserError(f"MNIST not found in {looked}: {HOW_TO_GET}")
        root = data_dir / "mnist"
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create {root} for the MNIST download: {e.strerror or e}") from None

    train = _torchvision_mnist(root, train=True, download=download)
    test = _torchvision_mnist(root, train=False, download=download)
    for ds, n_min, kind in ((train, train_points, "train"), (test, 1, "t10k")):
        if tuple(ds.data.shape[1:]) != (28, 28) or len(ds.targets) != len(ds.data) or len(ds.data) < n_min:
            raise UserError(
                f"MNIST {kind} files in {root / 'MNIST' / 'raw'} have unexpected shapes "
                f"(images {tuple(ds.data.shape)}, labels {tuple(ds.targets.shape)}); {HOW_TO_GET}"
            )

    x_train = train.data[:train_points].reshape(train_points, 784).to(torch.float32).div(255)
    y_train = train.targets[:train_points].to(torch.int64).clone()
    n_test = len(test.data)
    x_test = test.data.reshape(n_test, 784).to(torch.float32).div(255)
    y_test = test.targets.to(torch.int64).clone()
    return x_train, y_train, x_test, y_test
