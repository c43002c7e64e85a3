"""scripts/gradient_spectrum.py tiny on the CPU: it trains twice with the suite's task, model and filter and
writes the figure and the spectra."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import gradient_spectrum  # noqa: E402


def test_tiny_run_writes_figure_and_spectra(tmp_path):
    result = subprocess.run(
        [sys.executable, "scripts/gradient_spectrum.py", "--steps", "40", "--window", "32", "--segment", "16",
         "--p", "11", "--dim", "32", "--num_layers", "1", "--num_heads", "2", "--batch_size", "32",
         "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "spectrum.png").stat().st_size > 1000
    data = json.loads((tmp_path / "spectrum.json").read_text())
    assert set(data["runs"]) == {"baseline", "grokfast"}
    assert abs(data["cutoff_cycles_per_step"] - 0.02 / (2 * np.pi)) < 1e-12
    for run in data["runs"].values():
        assert len(run["frequency"]) == len(run["raw"]) == len(run["filtered"]) == 9
        assert len(run["entries"]) == 8 and abs(sum(run["raw"]) - 1) < 1e-9  # normalised to raw total power
        assert all(r > 0 for r in run["filtered_over_raw_power"])


def test_welch_of_a_sine_peaks_at_its_frequency_and_the_gain_formula():
    t = np.arange(4096)
    freq, power = gradient_spectrum.welch(np.sin(2 * np.pi * 0.125 * t)[None], 256)
    assert freq[np.argmax(power[0])] == 0.125
    gain = gradient_spectrum.ema_gain(np.array([0.0, 0.5]), 0.98, 2.0)
    assert abs(gain[0] - 9.0) < 1e-9 and abs(gain[1] - (1 + 2 * 0.02 / 1.98) ** 2) < 1e-9
