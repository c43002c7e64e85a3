"""Config: defaults <- YAML <- flags; unknown keys and wrong types fail, naming the key."""
import pytest

from repro.config import coerce, load_config, read_yaml, run_name
from repro.errors import UserError
from repro.tasks.modular import ModularConfig


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_are_the_reference_setup():
    cfg = load_config(ModularConfig, [])
    assert (cfg.p, cfg.budget, cfg.batch_size, cfg.lr, cfg.beta1, cfg.beta2) == (97, 300000, 512, 1e-3, 0.9, 0.98)
    assert (cfg.optimizer, cfg.weight_decay, cfg.warmup_steps, cfg.filter) == ("Adam", 0.0, 10, "none")


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    path = write(tmp_path, "filter: ema\nalpha: 0.9\nlamb: 3\nweight_decay: 1e-3\n")
    cfg = load_config(ModularConfig, ["--config", path, "--alpha", "0.95"])
    assert cfg.filter == "ema" and cfg.alpha == 0.95 and cfg.lamb == 3.0 and cfg.weight_decay == 1e-3


def test_budget_accepts_scientific_notation_like_the_reference():
    assert load_config(ModularConfig, ["--budget", "3e5"]).budget == 300000


def test_bool_flag_forms():
    assert load_config(ModularConfig, ["--two_stage"]).two_stage is True
    assert load_config(ModularConfig, ["--two_stage", "false"]).two_stage is False


@pytest.mark.parametrize("text, key", [
    ("alpah: 0.9\n", "alpah"),
    ("lr: fast\n", "lr"),
    ("budget: 2.5\n", "budget"),
    ("two_stage: maybe\n", "two_stage"),
    ("seed: true\n", "seed"),
    ("filter: 3\n", "filter"),
])
def test_yaml_errors_name_the_key(tmp_path, text, key):
    with pytest.raises(UserError, match=key):
        load_config(ModularConfig, ["--config", write(tmp_path, text)])


@pytest.mark.parametrize("argv, words", [
    (["--filter", "fir"], "filter"),
    (["--alpha", "1.0"], "alpha"),
    (["--window_size", "0"], "window_size"),
    (["--lr", "-1"], "lr"),
    (["--lamb", "inf"], "lamb"),
    (["--unknown_flag", "1"], "unknown_flag"),
    (["--config", "/no/such/file.yaml"], "not found"),
    (["--operation", "pow"], "operation"),
])
def test_bad_flags_raise_one_line_user_errors(argv, words):
    with pytest.raises(UserError, match=words) as info:
        load_config(ModularConfig, argv)
    assert "\n" not in str(info.value)


def test_yaml_must_be_a_mapping(tmp_path):
    with pytest.raises(UserError, match="mapping"):
        load_config(ModularConfig, ["--config", write(tmp_path, "- a\n- b\n")])


def test_coerce_never_takes_bool_as_number():
    with pytest.raises(UserError):
        coerce("lr", True, float)
    assert coerce("lr", 1, float) == 1.0 and isinstance(coerce("lr", 1, float), float)


def test_run_names_keep_small_lambdas_apart():
    a = load_config(ModularConfig, ["--filter", "ema", "--lamb", "0.1"])
    b = load_config(ModularConfig, ["--filter", "ema", "--lamb", "0.5"])
    assert run_name(a, "mul97") != run_name(b, "mul97")
    assert "l0.1" in run_name(a, "mul97")


@pytest.mark.parametrize("text, words", [
    ("lr: 1e-3\nlr: 2e-3\n", "key 'lr' appears twice (lines 1 and 2)"),
    ("filter: ema\nalpha: 0.9\nfilter: ma\n", "key 'filter' appears twice (lines 1 and 3)"),
    ("{seed: 1, seed: 2}\n", "key 'seed' appears twice (line 1)"),
])
def test_yaml_duplicate_keys_are_refused_naming_the_key(tmp_path, text, words):
    with pytest.raises(UserError) as info:
        load_config(ModularConfig, ["--config", write(tmp_path, text)])
    assert words in str(info.value) and "\n" not in str(info.value)


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    """`<<: *base` then an explicit key is YAML's override, not a duplicate."""
    path = write(tmp_path, "base: &b {lr: 0.1}\nx:\n  <<: *b\n  lr: 0.2\n")
    assert read_yaml(path) == {"base": {"lr": 0.1}, "x": {"lr": 0.2}}
