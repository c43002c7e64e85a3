"""Steps-to-threshold and the summary arithmetic."""
from repro.metrics import MetricsLog, first_step_reaching, read_jsonl, summarize


def records(accs):
    return [{"step": 10 * (i + 1), "val_acc": a, "val_loss": 1 - a, "elapsed_s": float(i)} for i, a in enumerate(accs)]


def test_first_step_reaching_is_the_first_evaluation_at_or_above():
    recs = records([0.1, 0.949, 0.95, 0.2, 0.99])
    assert first_step_reaching(recs, "val_acc", 0.95)["step"] == 30
    assert first_step_reaching(recs, "val_acc", 0.999) is None


def test_summary_reports_not_reached_as_none_and_latency():
    s = summarize(records([0.5, 0.86, 0.91]), steps=30, wall_s=3.0, train_step_ms=50.0,
                  peak_gpu_mem_mb=None, device="cpu", stopped="budget")
    assert (s["steps_to_85"], s["steps_to_90"], s["steps_to_95"]) == (20, 30, None)
    assert s["time_to_95_s"] is None and s["time_to_90_s"] == 2.0
    assert s["best_val_acc"] == 0.91 and abs(s["min_val_loss"] - 0.09) < 1e-12
    assert s["final_val_acc"] == 0.91 and s["wall_per_step_ms"] == 100.0


def test_metrics_log_appends_and_ignores_a_cut_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    log.append(records([0.1, 0.2]))
    with path.open("a") as f:
        f.write('{"step": 30, "val_ac')  # a crash mid-line
    assert [r["step"] for r in read_jsonl(path)] == [10, 20]
    log = MetricsLog(path)
    log.truncate_to(1)
    assert [r["step"] for r in read_jsonl(path)] == [10]


def test_read_jsonl_reads_a_gzipped_log_and_ignores_a_cut_line(tmp_path):
    import gzip
    import json

    lines = [json.dumps(r) for r in records([0.5, 0.96])]
    (tmp_path / "metrics.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines) + '\n{"step": 3').encode()))
    assert read_jsonl(tmp_path / "metrics.jsonl") == records([0.5, 0.96])
    assert read_jsonl(tmp_path / "absent.jsonl") == []


def test_an_explicit_commit_wins_over_the_checkouts(monkeypatch):
    from repro.metrics import git_commit

    monkeypatch.setenv("GROKFAST_GIT_COMMIT", "abc1234")
    assert git_commit() == "abc1234"
    monkeypatch.delenv("GROKFAST_GIT_COMMIT")
    assert git_commit() not in ("abc1234", "")


def test_header_records_the_mps_settings_of_a_shared_gpu(monkeypatch):
    import os

    import torch

    from repro.metrics import run_header
    for name in [n for n in os.environ if n.startswith("CUDA_MPS_")]:
        monkeypatch.delenv(name)
    assert "cuda_mps" not in run_header(torch.device("cpu"), [])
    monkeypatch.setenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "25")
    assert run_header(torch.device("cpu"), [])["cuda_mps"]["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
