"""--help of every entry point explains every option; string choices are case-insensitive."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from repro.config import _class_mapping, load_config, user_fields
from repro.tasks.imdb import ImdbConfig
from repro.tasks.mnist import MnistConfig
from repro.tasks.modular import ModularConfig
from repro.tasks.qm9 import Qm9Config

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {"main.py": ModularConfig, "main_mnist.py": MnistConfig, "main_imdb.py": ImdbConfig,
                "main_qm9.py": Qm9Config}


@pytest.mark.parametrize("cls", ENTRY_POINTS.values(), ids=ENTRY_POINTS.keys())
def test_every_option_has_a_one_line_help(cls):
    helps = _class_mapping(cls, "HELP")
    missing = [f.name for f in user_fields(cls) if f.name != "task" and not helps.get(f.name, "").strip()]
    assert not missing, f"options without help: {missing}"
    assert all("\n" not in text for text in helps.values())


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_help_lists_choices_and_keeps_the_examples_as_written(script):
    result = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=60, env={"COLUMNS": "120", "PATH": ""})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for option in ("--filter {none,ema,ma,ema_highpass}", "--optimizer {Adam,AdamW,SGD}", "--amp {none,fp16,bf16}",
                   "--on_nonfinite {stop,skip}"):
        assert option in out, option
    doc = ast.get_docstring(ast.parse((REPO / script).read_text()))
    examples = [line.strip() for line in doc.splitlines() if line.strip().startswith("python ")]
    shown = [line.strip() for line in out.splitlines()]
    assert examples and all(line in shown for line in examples)  # each on its own line, not reflowed


def test_budget_max_steps_and_patience_say_what_they_count():
    helps = _class_mapping(ModularConfig, "HELP")
    assert "--max_steps" in helps["budget"] and "budget" in helps["max_steps"]
    assert "evaluations, not steps" in helps["early_stop_patience"]
    assert "operation" in _class_mapping(ModularConfig, "CHOICES")


def test_choices_are_case_insensitive_from_flags_and_files(tmp_path):
    cfg = load_config(ModularConfig, ["--optimizer", "adamw", "--filter", "EMA", "--amp", "BF16",
                                      "--operation", "Add"])
    assert (cfg.optimizer, cfg.filter, cfg.amp, cfg.operation) == ("AdamW", "ema", "bf16", "add")
    path = tmp_path / "c.yaml"
    path.write_text("optimizer: sgd\nfilter_type: SUM\n")
    cfg = load_config(ModularConfig, ["--config", str(path)])
    assert (cfg.optimizer, cfg.filter_type) == ("SGD", "sum")
    assert load_config(MnistConfig, ["--loss_function", "crossentropy"]).loss_function == "CrossEntropy"
    assert load_config(Qm9Config, ["--features", "Sanitized"]).features == "sanitized"
