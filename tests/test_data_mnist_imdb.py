"""MNIST and IMDb loaders on the real data (shared/data); no synthetic data anywhere."""
import gzip
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from repro.data import imdb as imdb_mod
from repro.data.imdb import STOP_WORDS, find_imdb_csv, load_imdb, stratified_split
from repro.data.mnist import RAW_FILES, find_mnist_root, load_mnist
from repro.data.paths import source_key
from repro.errors import UserError


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


def _raw_source(data_dir: Path, name: str) -> Path:
    for raw in (data_dir / "mnist" / "MNIST" / "raw", data_dir / "MNIST" / "raw"):
        for p in (raw / name, raw / f"{name}.gz"):
            if p.is_file():
                return p
    pytest.skip(f"no MNIST file {name} under {data_dir}")


def _raw_bytes(data_dir: Path, name: str) -> bytes:
    p = _raw_source(data_dir, name)
    return gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()


# ----------------------------------------------------------------------------------------- MNIST


@pytest.fixture(scope="module")
def mnist(data_dir):
    return load_mnist(data_dir)


def test_mnist_shapes_dtypes_range(mnist):
    x_train, y_train, x_test, y_test = mnist
    assert x_train.shape == (1000, 784) and x_test.shape == (10000, 784)
    assert y_train.shape == (1000,) and y_test.shape == (10000,)
    assert x_train.dtype == x_test.dtype == torch.float32
    assert y_train.dtype == y_test.dtype == torch.int64
    for x in (x_train, x_test):
        assert x.min() == 0.0 and x.max() == 1.0
    assert set(y_train.tolist()) == set(range(10)) and set(y_test.tolist()) == set(range(10))


def test_mnist_first_labels(mnist):
    _, y_train, _, y_test = mnist
    assert y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    # The full test set's class histogram (shared/data/README.md).
    assert torch.bincount(y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_equals_torchvision_totensor_path(data_dir, mnist):
    """The fast path (data / 255) gives exactly the reference's ToTensor + Subset numbers."""
    import torchvision
    from torch.utils.data import Subset
    from torchvision.transforms import ToTensor

    x_train, y_train, x_test, y_test = mnist
    root = find_mnist_root(data_dir)
    train = Subset(torchvision.datasets.MNIST(str(root), train=True, transform=ToTensor()), range(1000))
    test = torchvision.datasets.MNIST(str(root), train=False, transform=ToTensor())
    assert len(train) == 1000
    for i in (0, 1, 7, 500, 999):
        img, label = train[i]
        assert img.shape == (1, 28, 28)
        assert torch.equal(img.reshape(-1), x_train[i]) and label == y_train[i].item()
    for i in (0, 3, 9999):
        img, label = test[i]
        assert torch.equal(img.reshape(-1), x_test[i]) and label == y_test[i].item()


def test_mnist_matches_idx_bytes(data_dir, mnist):
    """Independent of torchvision: pixels/labels straight from the idx bytes."""
    x_train, y_train, _, _ = mnist
    img = np.frombuffer(_raw_bytes(data_dir, "train-images-idx3-ubyte"), dtype=np.uint8, offset=16)
    lab = np.frombuffer(_raw_bytes(data_dir, "train-labels-idx1-ubyte"), dtype=np.uint8, offset=8)
    assert np.array_equal(x_train.numpy(), img[: 1000 * 784].reshape(1000, 784).astype(np.float32) / 255)
    assert np.array_equal(y_train.numpy(), lab[:1000].astype(np.int64))


def test_mnist_originals_untouched(data_dir, tmp_path, monkeypatch):
    raw = _raw_source(data_dir, RAW_FILES[0]).parent
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in raw.iterdir()}
    monkeypatch.setenv("GROKFAST_CACHE_DIR", str(tmp_path / "cache"))  # force a fresh decompression
    x_train, y_train, _, _ = load_mnist(data_dir, train_points=5)
    assert x_train.shape == (5, 784) and y_train.tolist() == [5, 0, 4, 1, 9]
    after = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in raw.iterdir()}
    assert before == after
    if (raw / f"{RAW_FILES[0]}.gz").is_file():  # gz layout: decompressed copies went to the cache
        cached = tmp_path / "cache" / "mnist" / source_key(raw) / "MNIST" / "raw"
        assert sorted(p.name for p in cached.iterdir()) == sorted(RAW_FILES)
        assert (cached / "train-labels-idx1-ubyte").stat().st_size == 60008


def test_mnist_uncompressed_layout(data_dir, tmp_path, monkeypatch, mnist):
    raw = tmp_path / "d" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in RAW_FILES:
        (raw / name).write_bytes(_raw_bytes(data_dir, name))
    monkeypatch.setenv("GROKFAST_CACHE_DIR", str(tmp_path / "cache"))
    assert find_mnist_root(tmp_path / "d") == tmp_path / "d"  # used in place, no cache copy
    out = load_mnist(tmp_path / "d")
    assert all(torch.equal(a, b) for a, b in zip(out, mnist))
    assert not (tmp_path / "cache" / "mnist" / "MNIST").exists()


def test_mnist_missing_dir(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as e:
        load_mnist(missing)
    msg = _one_line(e)
    assert str(missing / "mnist" / "MNIST" / "raw") in msg and "--download" in msg


def test_mnist_truncated_gz(data_dir, tmp_path, monkeypatch):
    raw = tmp_path / "d" / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in RAW_FILES:
        gz = gzip.compress(_raw_bytes(data_dir, name), compresslevel=1) if name != RAW_FILES[0] else None
        if gz is not None:
            (raw / f"{name}.gz").write_bytes(gz)
    src = _raw_source(data_dir, RAW_FILES[0])
    full = src.read_bytes() if src.suffix == ".gz" else gzip.compress(src.read_bytes(), compresslevel=1)
    (raw / f"{RAW_FILES[0]}.gz").write_bytes(full[: len(full) // 2])  # a truncated copy
    monkeypatch.setenv("GROKFAST_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(UserError) as e:
        load_mnist(tmp_path / "d")
    msg = _one_line(e)
    assert f"{RAW_FILES[0]}.gz" in msg and "truncated" in msg
    # nothing half-written left in the cache
    cached = tmp_path / "cache" / "mnist" / source_key(raw) / "MNIST" / "raw"
    assert not (cached / RAW_FILES[0]).exists() and not [p for p in cached.iterdir() if p.name.endswith(".tmp")]


def test_mnist_truncated_plain_file(data_dir, tmp_path):
    raw = tmp_path / "d" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in RAW_FILES:
        data = _raw_bytes(data_dir, name)
        (raw / name).write_bytes(data[:-100] if name == "t10k-labels-idx1-ubyte" else data)
    with pytest.raises(UserError) as e:
        load_mnist(tmp_path / "d")
    assert "t10k-labels-idx1-ubyte" in _one_line(e)


def test_mnist_bad_train_points(data_dir):
    for bad in (0, 60001, 1.5):
        with pytest.raises(UserError):
            load_mnist(data_dir, train_points=bad)


# ------------------------------------------------------------------------------------------ IMDb


@pytest.fixture(scope="module")
def imdb(data_dir):
    if find_imdb_csv(data_dir) is None:
        pytest.skip(f"no IMDb CSV under {data_dir}")
    return load_imdb(data_dir)


@pytest.fixture(scope="module")
def first_rows(data_dir, imdb):
    return pd.read_csv(find_imdb_csv(data_dir), nrows=1000)


def test_imdb_shapes_dtypes(imdb):
    assert imdb["x_train"].shape == (750, 500) and imdb["x_val"].shape == (250, 500)
    assert imdb["y_train"].shape == (750,) and imdb["y_val"].shape == (250,)
    assert imdb["x_train"].dtype == imdb["x_val"].dtype == torch.int64
    assert imdb["y_train"].dtype == imdb["y_val"].dtype == torch.float32
    assert set(torch.cat([imdb["y_train"], imdb["y_val"]]).unique().tolist()) == {0.0, 1.0}


def test_imdb_stratified(imdb, first_rows):
    n_pos = int((first_rows["sentiment"] == "positive").sum())
    assert (n_pos, len(first_rows) - n_pos) == (501, 499)
    tr_pos, va_pos = int(imdb["y_train"].sum()), int(imdb["y_val"].sum())
    assert tr_pos + va_pos == 501
    assert abs(tr_pos / 750 - 0.501) <= 1 / 750 and abs(va_pos / 250 - 0.501) <= 1 / 250
    assert (tr_pos, va_pos) == (376, 125)  # scikit-learn's StratifiedShuffleSplit allocation


def test_imdb_vocab(imdb):
    vocab = imdb["vocab"]
    assert len(vocab) == 1000 and sorted(vocab.values()) == list(range(1, 1001))
    for x in (imdb["x_train"], imdb["x_val"]):
        assert x.min() >= 0 and x.max() <= 1000
    assert not (set(vocab) & STOP_WORDS)
    assert all(w and re.fullmatch(r"[^\W\d]+", w) for w in vocab)  # cleaned words only
    assert len(STOP_WORDS) == 179 and {"the", "and", "not", "no", "very"} <= STOP_WORDS


def test_imdb_left_padding(imdb):
    for x in (imdb["x_train"], imdb["x_val"]):
        nz = (x != 0).to(torch.int8)
        assert torch.all(nz[:, 1:] >= nz[:, :-1])  # zeros only as a prefix (padding on the left)
        short = (nz.sum(1) > 0) & (nz.sum(1) < 500)
        assert short.any() and torch.all(x[short, 0] == 0) and torch.all(x[short, -1] != 0)


def test_imdb_long_reviews_keep_first_tokens(data_dir, imdb):
    """Reviews longer than seq_len keep their FIRST seq_len tokens (no review of the first 1000 has
    500 known words, so this is checked with seq_len=40 against the seq_len=500 rows)."""
    short = load_imdb(data_dir, seq_len=40)
    assert short["vocab"] == imdb["vocab"]
    for k in ("x_train", "x_val"):
        n_long = 0
        for row40, row500 in zip(short[k], imdb[k]):
            tokens = row500[row500 != 0]
            if len(tokens) >= 40:
                n_long += 1
                assert torch.equal(row40, tokens[:40])
            else:
                assert torch.equal(row40[40 - len(tokens) :], tokens) and not row40[: 40 - len(tokens)].any()
        assert n_long > 0


def _reference_tokenize(x_train, y_train, x_val, y_val):
    """The reference main_imdb.py `tockenize` (numpy padding), with the module's stop-word set."""

    def preprocess_string(s):
        s = re.sub(r"[^\w\s]", "", s)
        s = re.sub(r"\s+", "", s)
        s = re.sub(r"\d", "", s)
        return s

    word_list = []
    for sent in x_train:
        for word in sent.lower().split():
            word = preprocess_string(word)
            if word not in STOP_WORDS and word != "":
                word_list.append(word)
    corpus = Counter(word_list)
    corpus_ = sorted(corpus, key=corpus.get, reverse=True)[:1000]
    onehot_dict = {w: i + 1 for i, w in enumerate(corpus_)}

    def padding_(sentences, seq_len):
        features = np.zeros((len(sentences), seq_len), dtype=int)
        for ii, review in enumerate(sentences):
            if len(review) != 0:
                features[ii, -len(review) :] = np.array(review)[:seq_len]
        return features

    def enc(xs):
        return padding_(
            [[onehot_dict[preprocess_string(w)] for w in s.lower().split() if preprocess_string(w) in onehot_dict] for s in xs],
            500,
        )

    return (
        enc(x_train),
        np.array([1 if label == "positive" else 0 for label in y_train]),
        enc(x_val),
        np.array([1 if label == "positive" else 0 for label in y_val]),
        onehot_dict,
    )


def test_imdb_matches_reference_tokenisation(imdb, first_rows):
    X, y = first_rows["review"].astype(str).tolist(), first_rows["sentiment"].astype(str).tolist()
    tr, va = stratified_split([1 if s == "positive" else 0 for s in y], seed=0)
    assert len(set(tr.tolist()) | set(va.tolist())) == 1000
    ref = _reference_tokenize([X[i] for i in tr], [y[i] for i in tr], [X[i] for i in va], [y[i] for i in va])
    assert np.array_equal(imdb["x_train"].numpy(), ref[0])
    assert np.array_equal(imdb["y_train"].numpy(), ref[1].astype(np.float32))
    assert np.array_equal(imdb["x_val"].numpy(), ref[2])
    assert np.array_equal(imdb["y_val"].numpy(), ref[3].astype(np.float32))
    assert list(imdb["vocab"].items()) == list(ref[4].items())


def test_imdb_deterministic_and_seeded(data_dir, imdb, tmp_path, monkeypatch):
    monkeypatch.setenv("GROKFAST_CACHE_DIR", str(tmp_path / "c0"))  # a fresh build, not the cache
    again = load_imdb(data_dir, seed=0)
    for k in ("x_train", "y_train", "x_val", "y_val"):
        assert torch.equal(again[k], imdb[k])
    assert again["vocab"] == imdb["vocab"]
    other = load_imdb(data_dir, seed=1)
    assert not torch.equal(other["x_train"], imdb["x_train"])
    assert int(other["y_train"].sum()) == 376 and other["x_train"].shape == (750, 500)


def test_imdb_cache_used(data_dir, imdb, tmp_path, monkeypatch):
    monkeypatch.setenv("GROKFAST_CACHE_DIR", str(tmp_path))
    first = load_imdb(data_dir)
    files = list((tmp_path / "imdb").glob("*.pt"))
    assert len(files) == 1

    def boom(*a, **k):
        raise AssertionError("cache not used")

    monkeypatch.setattr(imdb_mod, "_build", boom)
    second = load_imdb(data_dir)
    for k in ("x_train", "y_train", "x_val", "y_val"):
        assert torch.equal(second[k], first[k]) and torch.equal(second[k], imdb[k])
        assert second[k].dtype == imdb[k].dtype
    assert second["vocab"] == imdb["vocab"]
    with pytest.raises(AssertionError, match="cache not used"):
        load_imdb(data_dir, seed=3)  # another key: a new build


def test_imdb_missing_csv(tmp_path):
    with pytest.raises(UserError) as e:
        load_imdb(tmp_path)
    msg = _one_line(e)
    assert str(tmp_path / "imdb") in msg and "IMDB Dataset.csv" in msg


def test_imdb_missing_column(data_dir, first_rows, tmp_path, monkeypatch):
    (tmp_path / "imdb").mkdir()
    first_rows.rename(columns={"sentiment": "label"}).to_csv(tmp_path / "imdb" / "IMDB Dataset.csv", index=False)
    monkeypatch.setenv("GROKFAST_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(UserError) as e:
        load_imdb(tmp_path)
    msg = _one_line(e)
    assert "sentiment" in msg and "IMDB Dataset.csv" in msg


def test_imdb_truncated_gz(data_dir, tmp_path, monkeypatch):
    src = find_imdb_csv(data_dir)
    data = src.read_bytes() if src.suffix == ".gz" else gzip.compress(src.read_bytes()[:2_000_000])
    (tmp_path / "IMDB-Dataset.csv.gz").write_bytes(data[:20_000])
    monkeypatch.setenv("GROKFAST_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(UserError) as e:
        load_imdb(tmp_path)
    assert "IMDB-Dataset.csv.gz" in _one_line(e)
