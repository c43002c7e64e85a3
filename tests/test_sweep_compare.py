"""compare_sweep: ranks and the permutation rank test in closed form, and its table on a made-up sweep."""
import math

import numpy as np

from test_sweep_plot import fake_sweep, load_script

compare_sweep = load_script("compare_sweep")


def test_ties_share_their_mean_rank_and_never_ranks_last():
    r = compare_sweep.ranks(np.array([30.0, 10.0, math.inf, 30.0, math.inf]))
    assert r.tolist() == [2.5, 1.0, 4.5, 2.5, 4.5]


def test_rank_test_p_values():
    same = np.array([10.0, 20.0, 30.0])
    assert compare_sweep.rank_test(same, same.copy()) == 1.0
    # 5 vs 5 fully apart: exactly 2 of the C(10, 5) = 252 labellings are as extreme, p = 2/252
    p = compare_sweep.rank_test(np.arange(5.0), np.arange(5.0) + 100)
    assert abs(p - 2 / 252) < 0.004
    # a never-reached member ranks above every reached one, so it counts against its side
    assert compare_sweep.rank_test(np.array([1.0, 2, 3, 4, 5]), np.array([6.0, 7, 8, 9, math.inf])) < 0.02


def test_table_per_other_setting(tmp_path):
    # lamb 0: seeds reach at 20/40 with wd 0.1 and 30/never with wd 1.0; lamb 2 the same, 10 steps later
    def reached_at(m):
        base = {(0.1, 0): 20, (0.1, 1): 40, (1.0, 0): 30, (1.0, 1): None}[(m.cfg.weight_decay, m.seed)]
        return None if base is None else base + (10 if m.cfg.lamb == 2.0 else 0)
    sweep_dir = fake_sweep(tmp_path, reached_at, grid={"lamb": [0.0, 2.0], "weight_decay": [0.1, 1.0]}, seeds=[0, 1])
    text = compare_sweep.compare(sweep_dir, "lamb", 0.95)
    rows = [line for line in text.splitlines() if line.startswith("| 0") or line.startswith("| 1")]
    assert rows[0].startswith("| 0.1 | 0 | 2/2 | 30 | 30 | 14 | 20-40 |")
    assert rows[1].startswith("| 0.1 | 2 | 2/2 | 40 | 40 | 14 | 30-50 |")
    assert rows[2].startswith("| 1 | 0 | 1/2 | 30 | 30 |  | 30-30 |")
    assert rows[3].startswith("| 1 | 2 | 1/2 | 40 |")
    assert compare_sweep.main([str(sweep_dir), "--by", "lamb"]) == 0 and (sweep_dir / "compare_lamb.md").exists()
    assert compare_sweep.main([str(sweep_dir), "--by", "alpha"]) == 2
