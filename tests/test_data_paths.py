"""Derived-data caches go to the user's cache folder, never into the data folder unless it is chosen for
them: a data folder may be shared or read-only, and as root every folder passes a write test."""
import shutil
from pathlib import Path

import pytest

from repro.data.imdb import load_imdb
from repro.data.mnist import load_mnist
from repro.data.paths import cache_root
from repro.data.qm9 import load_qm9


def files(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*")}


def test_cache_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GROKFAST_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root() == tmp_path / "home" / ".cache" / "grokfast"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "grokfast"
    monkeypatch.setenv("GROKFAST_CACHE_DIR", str(tmp_path / "chosen"))
    assert cache_root() == tmp_path / "chosen"


@pytest.fixture
def writable_data(data_dir, tmp_path) -> Path:
    """A writable copy of the real data (the files one small load of each dataset reads)."""
    copy = tmp_path / "data"
    shutil.copytree(data_dir / "mnist", copy / "mnist")
    for name in ("imdb/IMDB_Dataset_10k.csv.gz", "qm9/qm9_first10k.csv.gz", "qm9/uncharacterized.txt.gz"):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_dir / name, copy / name)
    for p in copy.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return copy


@pytest.mark.parametrize("load", [
    lambda d: load_mnist(d, train_points=5),
    lambda d: load_imdb(d, num_reviews=8, vocab_size=10, seq_len=5),
    lambda d: load_qm9(d, max_molecules=3),
], ids=["mnist", "imdb", "qm9"])
def test_a_writable_data_folder_is_not_written(load, writable_data, tmp_path, monkeypatch):
    monkeypatch.delenv("GROKFAST_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    before = files(writable_data)
    load(writable_data)
    assert files(writable_data) == before
    assert any(p.is_file() for p in (tmp_path / "xdg" / "grokfast").rglob("*"))


def test_the_data_folder_holds_the_cache_when_chosen(writable_data, monkeypatch):
    monkeypatch.setenv("GROKFAST_CACHE_DIR", str(writable_data / "cache"))
    load_qm9(writable_data, max_molecules=3)
    assert any(p.suffix == ".pt" for p in (writable_data / "cache" / "qm9").rglob("*"))
