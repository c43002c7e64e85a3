"""The binary operations of Power et al. (2022) mod p (issue 21 question 6): closed-form answers, every
answer a residue, the pairs and order every operation shares, and a short CPU run of each new one."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from repro.tasks.modular import OPERATIONS, ModularConfig, modular_equations

REPO = Path(__file__).resolve().parents[1]
NEW = ("sq_sum", "quad", "cube_xy", "cube_xy2_y")
FORMULAS = {
    "mul": lambda x, y, p: x * y % p,
    "add": lambda x, y, p: (x + y) % p,
    "sub": lambda x, y, p: (x - y) % p,
    "div": lambda x, y, p: x * pow(y, -1, p) % p,
    "sq_sum": lambda x, y, p: (x**2 + y**2) % p,
    "quad": lambda x, y, p: (x**2 + x * y + y**2) % p,
    "cube_xy": lambda x, y, p: (x**3 + x * y) % p,
    "cube_xy2_y": lambda x, y, p: (x**3 + x * y**2 + y) % p,
}
# a few worked by hand, mod 97
HAND = {
    "sq_sum": {(3, 4): 25, (10, 10): 6, (96, 1): 2},            # 200 = 2*97 + 6; (-1)^2 + 1
    "quad": {(3, 4): 37, (10, 10): 9, (96, 1): 1},              # 300 = 3*97 + 9; 1 - 1 + 1
    "cube_xy": {(3, 4): 39, (10, 10): 33, (0, 5): 0},           # 27 + 12; 1100 = 11*97 + 33
    "cube_xy2_y": {(3, 4): 79, (2, 1): 11, (0, 5): 5},          # 27 + 48 + 4; 8 + 2 + 1; 0 + 0 + 5
}


def test_every_operation_is_a_choice_and_the_new_ones_are_there():
    assert set(FORMULAS) == set(OPERATIONS) and OPERATIONS[:4] == ("mul", "add", "sub", "div")
    assert set(NEW) <= set(ModularConfig.CHOICES["operation"])
    help_text = ModularConfig.HELP["operation"]
    assert all(name in help_text for name in OPERATIONS)


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("p", [11, 97])
def test_answers_are_the_closed_form_residues_over_the_shared_pairs(operation, p):
    data = modular_equations(p, operation)
    mul = modular_equations(p, "mul")
    assert data.shape == (5, p * (p - 1))
    assert torch.equal(data[:4], mul[:4])  # same pairs (x in [0, p), y in [1, p)), same order, same tokens
    c = data[4]
    assert c.dtype == torch.long and int(c.min()) >= 0 and int(c.max()) < p
    for x, y, answer in data.T[:, [0, 2, 4]].tolist():
        assert answer == FORMULAS[operation](x, y, p), (x, y)


@pytest.mark.parametrize("operation", NEW)
def test_a_few_answers_worked_by_hand(operation):
    data = modular_equations(97, operation)
    for (x, y), answer in HAND[operation].items():
        column = (x * 96 + (y - 1))  # cartesian_prod order: x major, y in 1..96
        assert data[0, column] == x and data[2, column] == y
        assert int(data[4, column]) == answer


@pytest.mark.parametrize("operation", NEW)
def test_a_short_cpu_run_of_each_new_operation(tmp_path, operation):
    result = subprocess.run(
        [sys.executable, "main.py", "--operation", operation, "--p", "11", "--dim", "32", "--num_heads", "2",
         "--num_layers", "1", "--batch_size", "32", "--budget", "20", "--device", "cpu", "--progress", "false",
         "--out_dir", str(tmp_path / "run")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "summary.json").exists()
