"""stack_commands.py: a table's solo commands become one population whose members write what the solo runs
write, in the same folders; what cannot stack passes through unchanged."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--max_steps", "20", "--p", "11", "--dim", "32", "--num_heads", "2", "--num_layers", "1",
         "--batch_size", "32", "--log_every_evals", "1"]


def run(cmd: list[str], stdin: str = "") -> str:
    result = subprocess.run(cmd, cwd=REPO, input=stdin, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout


def table_commands(results: Path) -> str:
    return run(["bash", "scripts/reproduce_modular_ema.sh", "--print", "--seeds", "0 1", "--device", "cpu",
                "--results", str(results), "--", *SMALL])


def population_listings(lines: list[str]) -> list[str]:
    """The member file that each `--population FILE` command line names, read."""
    return [Path(line.split("--population ")[1].split()[0]).read_text() for line in lines]


def test_a_tables_runs_train_as_one_population_into_their_solo_folders(tmp_path):
    solo_lines = table_commands(tmp_path / "solo")
    assert len(solo_lines.splitlines()) == 6  # baseline, grokfast_ema, wd_ema x 2 seeds
    pop_lines = table_commands(tmp_path / "pop")
    stacked = run([sys.executable, "scripts/stack_commands.py"], pop_lines + pop_lines.splitlines()[0])  # one twice
    assert len(stacked.splitlines()) == 1 and "--population" in stacked
    for results, lines in ((tmp_path / "solo", solo_lines), (tmp_path / "pop", stacked)):
        run([sys.executable, "scripts/run_commands.py", "--jobs", "1", "--logdir", str(results / "logs")], lines)
    solo = sorted(p for p in (tmp_path / "solo" / "modular").iterdir())
    pop = sorted(p for p in (tmp_path / "pop" / "modular").iterdir())
    assert [p.name for p in pop] == [p.name for p in solo] and len(pop) == 6
    for p, s in zip(pop, solo):
        a = [json.loads(line) for line in (p / "metrics.jsonl").read_text().splitlines()]
        b = [json.loads(line) for line in (s / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in a] == [r["step"] for r in b]
        for ra, rb in zip(a, b):
            for key in ("train_loss", "val_loss", "val_acc"):
                assert abs(ra[key] - rb[key]) <= 1e-5 * max(1.0, abs(rb[key])), (p.name, ra["step"], key)
        assert json.loads((p / "header.json").read_text())["population"]["size"] == 6


def test_what_cannot_stack_passes_through(tmp_path):
    lines = [
        f"python3 main_imdb.py --config configs/imdb/baseline.yaml --seed 0 --results_dir {tmp_path}",  # no vmap
        f"python3 main.py --config configs/modular/ema.yaml --seed 0 --results_dir {tmp_path}",  # alone: EMA
        f"python3 main.py --config configs/modular/ma.yaml --seed 0 --results_dir {tmp_path}",  # MA family
        f"env CUDA_MPS_CLIENT_PRIORITY=1 python3 main.py --seed 1 --results_dir {tmp_path}",  # an env prefix
        f"python3 main.py --config configs/modular/ema.yaml --seed 3 --amp fp16 --results_dir {tmp_path}",  # fp16
    ]
    out = run([sys.executable, "scripts/stack_commands.py"], "\n".join(lines) + "\n")
    assert out.splitlines() == lines


def test_keep_solo_leaves_matching_runs_out_of_the_populations(tmp_path):
    lines = table_commands(tmp_path).splitlines()
    stacked = run([sys.executable, "scripts/stack_commands.py", "--keep_solo", r"wd_ema\.yaml"], "\n".join(lines))
    out = stacked.splitlines()
    assert [line for line in out if "wd_ema.yaml" in line] == [line for line in lines if "wd_ema.yaml" in line]
    assert len(out) == 3 and sum("--population" in line for line in out) == 1  # the other four: one population
    bad = subprocess.run([sys.executable, "scripts/stack_commands.py", "--keep_solo", "("], cwd=REPO, input="",
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--keep_solo" in bad.stderr


def test_apart_stacks_matching_runs_in_populations_of_their_own(tmp_path):
    lines = table_commands(tmp_path).splitlines()
    stacked = run([sys.executable, "scripts/stack_commands.py", "--apart", r"wd_ema\.yaml"], "\n".join(lines))
    out = stacked.splitlines()
    assert len(out) == 2 and all("--population" in line for line in out)
    listings = population_listings(out)
    assert sorted(text.count("out_dir") for text in listings) == [2, 4]  # the two controls; the other four
    assert "wd_ema" in min(listings, key=len) and "wd_ema" not in max(listings, key=len)


def test_apart_sets_apart_one_group_per_matched_text(tmp_path):
    lines = table_commands(tmp_path).splitlines()
    stacked = run([sys.executable, "scripts/stack_commands.py", "--apart", r"wd_ema\.yaml|baseline\.yaml"],
                  "\n".join(lines))
    out = stacked.splitlines()
    assert len(out) == 3 and all("--population" in line for line in out)
    listings = population_listings(out)
    assert [text.count("out_dir") for text in listings] == [2, 2, 2]
    for config in ("wd_ema", "baseline"):  # each set-apart group alone in its population
        assert sum(config in text for text in listings) == 1
