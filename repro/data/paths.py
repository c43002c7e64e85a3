"""Where datasets are read from and where derived caches are written."""
import os
from pathlib import Path

from repro.errors import UserError

DATA_DIR_ENV = "GROKFAST_DATA_DIR"
CACHE_DIR_ENV = "GROKFAST_CACHE_DIR"
DEFAULT_DATA_DIR = "data"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The explicit value (flag / config) wins, then $GROKFAST_DATA_DIR, then `data/`. A path that
    exists but is not a folder is an error (a missing one may still be filled by a download)."""
    path = Path(data_dir) if data_dir else Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)
    if path.exists() and not path.is_dir():
        raise UserError(f"data dir {path} is not a directory (pass --data_dir / set {DATA_DIR_ENV})")
    return path


def cache_dir(data_dir: str | os.PathLike, name: str) -> Path:
    """A writable folder for derived files (decompressed idx files, token tensors, processed graphs).

    $GROKFAST_CACHE_DIR if set; else `<data_dir>/cache/<name>` when the data dir is writable
    (the shared data copy is read-only, and originals are never modified); else
    `~/.cache/grokfast-repro/<name>`.
    """
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        path = Path(env) / name
    elif _writable(Path(data_dir)):
        path = Path(data_dir) / "cache" / name
    else:
        path = Path.home() / ".cache" / "grokfast-repro" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _writable(folder: Path) -> bool:
    """Try it: os.access says yes to root even on a read-only mount."""
    probe = folder / f".write_probe_{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
        return True
    except OSError:
        return False
