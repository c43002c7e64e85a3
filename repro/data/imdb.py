"""IMDb sentiment data as in the Grokfast reference script (`main_imdb.py`).

The reference:
  * `df = pd.read_csv("IMDB-Dataset.csv")` (columns review, sentiment), keeps the FIRST 1000 rows;
  * `train_test_split(X, y, stratify=y)`: stratified, test_size 0.25, no fixed random_state.
    Here: the same class allocation as scikit-learn's StratifiedShuffleSplit (750/250 with class
    proportions kept), seeded by `seed` with NumPy, no scikit-learn dependency;
  * each word of `review.lower().split()` goes through `preprocess_string` (remove `[^\\w\\s]`,
    remove whitespace, remove digits); English stop words and empty words are dropped;
  * vocabulary: the 1000 most frequent words of the TRAINING reviews (in training order; ties
    keep first-occurrence order, as `sorted(counter, key=counter.get, reverse=True)` /
    `Counter.most_common` do), indices 1..1000 by rank, 0 = padding; unknown words dropped;
  * `padding_`: `features[i, -len(review):] = np.array(review)[:seq_len]`, i.e. short reviews are
    LEFT-padded with 0 and long ones keep their FIRST seq_len tokens;
  * labels: "positive" -> 1, anything else -> 0 (here: "negative" -> 0, other values are an error).

The tokenised tensors are cached in `cache_dir("imdb")/<key>.pt` (the key names the CSV by path, size and
modification time).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from repro.data.paths import cache_dir
from repro.errors import UserError

CSV_NAMES = ("IMDB Dataset.csv", "IMDB-Dataset.csv", "IMDB_Dataset.csv", "IMDB_Dataset_10k.csv")
TEST_SIZE = 0.25
CACHE_FORMAT = 1  # bump when the preprocessing changes, so old caches are ignored
HOW_TO_GET = (
    "put Kaggle's 'IMDB Dataset of 50K Movie Reviews' CSV (IMDB Dataset.csv, columns review,sentiment; "
    "gzipped or not) in <data_dir>/imdb/ (or build it from Stanford's aclImdb: "
    "https://ai.stanford.edu/~amaas/data/sentiment/), and pass --data_dir / set GROKFAST_DATA_DIR"
)

# NLTK's English stop-word list (`nltk.corpus.stopwords.words('english')`, the 179-word version
# the reference used via `set(stopwords.words('english'))`; the public main_imdb.py embeds the
# same 179 words as a literal set). Entries with an apostrophe can never match a preprocessed
# word (punctuation is removed first), exactly as in the reference.
STOP_WORDS = frozenset(
    """
    a about above after again against ain all am an and any are aren aren't as at be because been
    before being below between both but by can couldn couldn't d did didn didn't do does doesn
    doesn't doing don don't down during each few for from further had hadn hadn't has hasn hasn't
    have haven haven't having he her here hers herself him himself his how i if in into is isn
    isn't it it's its itself just ll m ma me mightn mightn't more most mustn mustn't my myself
    needn needn't no nor not now o of off on once only or other our ours ourselves out over own re
    s same shan shan't she she's should should've shouldn shouldn't so some such t than that
    that'll the their theirs them themselves then there these they this those through to too under
    until up ve very was wasn wasn't we were weren weren't what when where which while who whom why
    will with won won't wouldn wouldn't y you you'd you'll you're you've your yours yourself
    yourselves
    """.split()
)
assert len(STOP_WORDS) == 179

_NON_WORD = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")
_DIGIT = re.compile(r"\d")


def preprocess_string(s: str) -> str:
    """The reference's per-word cleaning: drop non-word characters, whitespace, then digits."""
    s = _NON_WORD.sub("", s)
    s = _SPACE.sub("", s)
    s = _DIGIT.sub("", s)
    return s


def tokenize(review: str) -> list[str]:
    """Cleaned words of one review (lower-cased; empty words kept out; stop words NOT removed)."""
    return [w for w in (preprocess_string(word) for word in review.lower().split()) if w]


def candidate_csv_paths(data_dir: str | os.PathLike) -> list[Path]:
    data_dir = Path(data_dir)
    return [folder / (name + ext) for folder in (data_dir / "imdb", data_dir) for name in CSV_NAMES for ext in ("", ".gz")]


def find_imdb_csv(data_dir: str | os.PathLike) -> Path | None:
    for p in candidate_csv_paths(data_dir):
        if p.is_file():
            return p
    return None


def _read_csv(path: Path, num_reviews: int) -> tuple[list[str], list[int]]:
    import pandas as pd  # local import: only IMDb needs it

    try:
        df = pd.read_csv(path, nrows=num_reviews)
    except Exception as e:  # noqa: BLE001 - pandas/gzip/zlib raise assorted types for bad files
        msg = " ".join(str(e).split())[:200] or type(e).__name__
        raise UserError(f"IMDb CSV {path} cannot be read ({type(e).__name__}: {msg}); replace it ({HOW_TO_GET})") from None
    missing = [c for c in ("review", "sentiment") if c not in df.columns]
    if missing:
        raise UserError(
            f"IMDb CSV {path} lacks column(s) {', '.join(missing)} (has: {', '.join(map(str, df.columns))[:200]}); "
            f"expected columns review,sentiment ({HOW_TO_GET})"
        )
    if len(df) < num_reviews:
        raise UserError(f"IMDb CSV {path} has only {len(df)} rows, fewer than num_reviews={num_reviews}")
    if df["review"].isna().any() or df["sentiment"].isna().any():
        row = int(np.flatnonzero((df["review"].isna() | df["sentiment"].isna()).to_numpy())[0])
        raise UserError(f"IMDb CSV {path} has an empty review or sentiment in data row {row}; replace it ({HOW_TO_GET})")
    reviews = [str(r) for r in df["review"].tolist()]
    sentiments = [str(s).strip().lower() for s in df["sentiment"].tolist()]
    bad = sorted(set(sentiments) - {"positive", "negative"})
    if bad:
        raise UserError(
            f"IMDb CSV {path} has sentiment values other than positive/negative (e.g. {bad[0][:40]!r}); "
            f"replace it ({HOW_TO_GET})"
        )
    return reviews, [1 if s == "positive" else 0 for s in sentiments]


def _approximate_mode(class_counts: np.ndarray, n_draws: int) -> np.ndarray:
    """Per-class draw counts proportional to class_counts (scikit-learn's `_approximate_mode`,
    with remaining draws given by largest fractional part, ties to the lower class label)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous).astype(np.int64)
    need = n_draws - int(floored.sum())
    if need > 0:
        remainder = continuous - floored
        order = sorted(range(len(class_counts)), key=lambda k: (-remainder[k], k))
        for k in order:
            if need == 0:
                break
            take = min(need, int(class_counts[k] - floored[k]))
            floored[k] += take
            need -= take
    return floored


def stratified_split(labels: list[int] | np.ndarray, seed: int, test_size: float = TEST_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx), shuffled, with class proportions kept (like sklearn's
    `train_test_split(..., stratify=y)`: n_test = ceil(test_size * n)); deterministic in `seed`."""
    labels = np.asarray(labels)
    n = len(labels)
    n_test = int(math.ceil(test_size * n))
    n_train = n - n_test
    classes, y_idx = np.unique(labels, return_inverse=True)
    class_counts = np.bincount(y_idx)
    if len(classes) < 2 or class_counts.min() < 2 or n_train < len(classes) or n_test < len(classes):
        raise UserError(
            f"cannot make a stratified {n_train}/{n_test} split of {n} reviews with class counts "
            f"{dict(zip(classes.tolist(), class_counts.tolist()))}; use more reviews"
        )
    rng = np.random.default_rng(seed)
    n_i = _approximate_mode(class_counts, n_train)
    t_i = _approximate_mode(class_counts - n_i, n_test)
    train, test = [], []
    for k in range(len(classes)):
        members = np.flatnonzero(y_idx == k)
        perm = members[rng.permutation(len(members))]
        train.extend(perm[: n_i[k]].tolist())
        test.extend(perm[n_i[k] : n_i[k] + t_i[k]].tolist())
    train_idx = rng.permutation(np.asarray(train, dtype=np.int64))
    test_idx = rng.permutation(np.asarray(test, dtype=np.int64))
    return train_idx, test_idx


def build_vocab(train_reviews: list[str], vocab_size: int) -> dict[str, int]:
    """The `vocab_size` most frequent non-stop words of the training reviews -> 1..vocab_size."""
    counts = Counter(w for review in train_reviews for w in tokenize(review) if w not in STOP_WORDS)
    return {w: i + 1 for i, (w, _) in enumerate(counts.most_common(vocab_size))}


def encode(reviews: list[str], vocab: dict[str, int], seq_len: int) -> torch.Tensor:
    """LongTensor (len(reviews), seq_len): known-word indices, left-padded with 0 / cut to the first seq_len."""
    out = torch.zeros((len(reviews), seq_len), dtype=torch.int64)
    for i, review in enumerate(reviews):
        ids = [vocab[w] for w in tokenize(review) if w in vocab][:seq_len]
        if ids:
            out[i, seq_len - len(ids) :] = torch.tensor(ids, dtype=torch.int64)
    return out


def _cache_path(csv_path: Path, num_reviews: int, vocab_size: int, seq_len: int, seed: int) -> Path:
    st = csv_path.stat()
    key = json.dumps(
        [CACHE_FORMAT, str(csv_path.resolve()), st.st_size, st.st_mtime_ns, num_reviews, vocab_size, seq_len, seed]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_dir("imdb") / f"imdb_n{num_reviews}_v{vocab_size}_L{seq_len}_s{seed}_{digest}.pt"


def _build(csv_path: Path, num_reviews: int, vocab_size: int, seq_len: int, seed: int) -> dict:
    reviews, labels = _read_csv(csv_path, num_reviews)
    train_idx, val_idx = stratified_split(labels, seed)
    x_train_text = [reviews[i] for i in train_idx]
    x_val_text = [reviews[i] for i in val_idx]
    vocab = build_vocab(x_train_text, vocab_size)
    y = torch.tensor(labels, dtype=torch.float32)
    return {
        "x_train": encode(x_train_text, vocab, seq_len),
        "y_train": y[torch.from_numpy(train_idx)].clone(),
        "x_val": encode(x_val_text, vocab, seq_len),
        "y_val": y[torch.from_numpy(val_idx)].clone(),
        "vocab": vocab,
    }


def _load_cache(path: Path, num_train: int, num_val: int, seq_len: int) -> dict | None:
    if not path.is_file():
        return None
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
        ok = (
            isinstance(d, dict)
            and tuple(d["x_train"].shape) == (num_train, seq_len)
            and tuple(d["x_val"].shape) == (num_val, seq_len)
            and tuple(d["y_train"].shape) == (num_train,)
            and tuple(d["y_val"].shape) == (num_val,)
            and isinstance(d["vocab"], dict)
        )
    except Exception:  # noqa: BLE001 - an unreadable cache is simply rebuilt
        return None
    return {k: d[k] for k in ("x_train", "y_train", "x_val", "y_val", "vocab")} if ok else None


def _save_cache(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(data, tmp)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a cache that cannot be written is not an error


def load_imdb(
    data_dir: str | os.PathLike,
    num_reviews: int = 1000,
    vocab_size: int = 1000,
    seq_len: int = 500,
    seed: int = 0,
    download: bool = False,
) -> dict:
    """dict(x_train LongTensor (750, 500), y_train FloatTensor (750,), x_val (250, 500),
    y_val (250,), vocab {word: index 1..vocab_size}) for the defaults."""
    for name, v, lo in (("num_reviews", num_reviews, 4), ("vocab_size", vocab_size, 1), ("seq_len", seq_len, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise UserError(f"{name} must be an integer >= {lo}, got {v!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    data_dir = Path(data_dir)
    csv_path = find_imdb_csv(data_dir)
    if csv_path is None:
        looked = f"{data_dir / 'imdb'} and {data_dir} (names: {', '.join(CSV_NAMES)}, optionally .gz)"
        extra = "IMDb has no automatic download; " if download else ""
        raise UserError(f"IMDb CSV not found in {looked}: {extra}{HOW_TO_GET}")

    num_val = int(math.ceil(TEST_SIZE * num_reviews))
    num_train = num_reviews - num_val
    path = _cache_path(csv_path, num_reviews, vocab_size, seq_len, seed)
    cached = _load_cache(path, num_train, num_val, seq_len)
    if cached is not None:
        return cached
    data = _build(csv_path, num_reviews, vocab_size, seq_len, seed)
    _save_cache(path, data)
    return data
