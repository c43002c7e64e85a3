"""Where datasets are read from and where derived caches are written."""
import hashlib
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


def cache_root() -> Path:
    """$GROKFAST_CACHE_DIR, else $XDG_CACHE_HOME/grokfast, else ~/.cache/grokfast. Never the data folder
    unless $GROKFAST_CACHE_DIR names it: a data folder may be shared or read-only, and as root every
    folder looks writable."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache") / "grokfast"


def cache_dir(name: str) -> Path:
    """A writable folder for one kind of derived file (decompressed idx files, token tensors, processed
    graphs), created if needed. Its files are named after their sources, since one cache serves every
    data folder."""
    path = cache_root() / name
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the cache folder {path} ({exc.strerror or exc}): set {CACHE_DIR_ENV} "
                        f"to a writable folder") from None
    return path


def source_key(path: str | os.PathLike) -> str:
    """A short name for a source folder or file, from its absolute path: its cache entries stay apart
    from those of another data folder."""
    return hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:10]
