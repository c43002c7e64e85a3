"""Overlay several runs (e.g. baseline vs Grokfast) the way the paper's figures do.

    python scripts/plot_runs.py results/modular/*_s0 -o results/modular/overlay.png
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from repro.metrics import stored_jsonl  # noqa: E402
from repro.plots import plot_runs  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run folders holding metrics.jsonl")
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
    parser.add_argument("--labels", nargs="*", help="one legend label per run (default: run names)")
    parser.add_argument("--title", default="", help="figure title (default none)")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.run_dirs if stored_jsonl(d / "metrics.jsonl") is None]
    if missing:
        parser.error(f"no metrics.jsonl in: {', '.join(missing)}")
    if args.labels and len(args.labels) != len(args.run_dirs):
        parser.error("give one --labels entry per run folder")
    print(plot_runs(args.run_dirs, args.output, args.labels, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
