"""Fuzz of the config loader: whatever a YAML file or the command line holds, load_config returns a
valid config or raises UserError with a one-line message, never another exception."""
import tempfile
from dataclasses import fields
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from repro.config import load_config, merge
from repro.errors import UserError
from repro.tasks.imdb import ImdbConfig
from repro.tasks.mnist import MnistConfig
from repro.tasks.modular import ModularConfig
from repro.tasks.qm9 import Qm9Config

CLASSES = [ModularConfig, MnistConfig, ImdbConfig, Qm9Config]
NAMES = sorted({f.name for cls in CLASSES for f in fields(cls)} | {a for cls in CLASSES for a in cls.ALIASES})
FUZZ = settings(derandomize=True, max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(min_value=-3, max_value=300), st.integers(min_value=2**60),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(min_value=-2, max_value=2),
    st.text(max_size=12), st.sampled_from(["ema", "ma", "none", "Adam", "SGD", "cpu", "cuda:0", "1e-3", "3e5",
                                           "true", "off", "mean", "fp16", "bf16", "skip", "nan", "-inf", "1_000"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                          max_size=3), max_leaves=6)
keys = st.one_of(st.sampled_from(NAMES), st.sampled_from(NAMES), st.text(max_size=10), st.integers(), st.booleans())
mappings = st.dictionaries(keys, values, max_size=6)


def outcome(fn):
    """The config fn returns (checked valid), or None after a one-line UserError."""
    try:
        cfg = fn()
        cfg.validate()
    except UserError as exc:
        assert "\n" not in str(exc) and str(exc)
        return None
    return cfg


@FUZZ
@given(cls=st.sampled_from(CLASSES), mapping=mappings)
def test_yaml_mapping_gives_a_config_or_a_user_error(cls, mapping):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(yaml.safe_dump(mapping))
        cfg = outcome(lambda: load_config(cls, ["--config", str(path)]))
    if cfg is not None:
        assert isinstance(cfg, cls)
        for key, value in mapping.items():  # what was accepted is what the config holds (up to type)
            name = cls.ALIASES.get(key, key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
                assert getattr(cfg, name) == value


@FUZZ
@given(cls=st.sampled_from(CLASSES), mapping=mappings)
def test_merge_of_any_values_types_them_or_raises_a_user_error(cls, mapping):
    outcome(lambda: cls(**merge(cls, mapping)))


@FUZZ
@given(cls=st.sampled_from(CLASSES), text=st.text(max_size=80) | st.sampled_from(
    ["a: [", "a: {b", "- 1\n- 2", "!!python/object:os.system ls", "x: 2001-02-30", "&a [*a]", "? [1]\n: 2",
     "lr: 1e-3\nlr: 2e-3", "budget: 0x10", "seed: .inf", "filter: !!binary aGk=", "\t: 1"]))
def test_any_yaml_text_gives_a_config_or_a_user_error(cls, text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text)
        outcome(lambda: load_config(cls, ["--config", str(path)]))


@FUZZ
@given(cls=st.sampled_from(CLASSES), argv=st.lists(st.one_of(
    st.sampled_from(NAMES).map(lambda n: "--" + n), st.text(max_size=8), st.sampled_from(["--config", "-h1", "--"]),
    scalars.map(str)), max_size=6))
def test_any_command_line_gives_a_config_or_a_user_error(cls, argv):
    if any(a in ("-h", "--help") or a.startswith("--config") for a in argv):  # help exits; files: tested above
        return
    outcome(lambda: load_config(cls, argv))
