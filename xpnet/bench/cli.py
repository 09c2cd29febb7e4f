"""``xpnet bench`` and ``python -m xpnet.bench``: the command line of the report.

Only the standard library's argparse is imported here, because ``xpnet``'s command line
declares every subcommand's arguments at start: the report's own modules load when the
command runs.
"""

from __future__ import annotations

import argparse
import sys


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Declare the report's arguments on ``p`` (the ``xpnet bench`` subparser or its own)."""
    p.add_argument("json", help="a pytest-benchmark JSON (pytest benchmarks/ --benchmark-json=F)")
    p.add_argument("-o", "--output", default="RESULTS.md", help="the Markdown report to write")
    p.add_argument("--charts-dir", metavar="DIR",
                   help="where to write speedups.png and scaling.png (default: beside the "
                   "report)")
    p.add_argument("--no-charts", action="store_true", help="write the Markdown only")
    p.add_argument("--gpu-results", metavar="FILE",
                   help="add the section of a GPU check (OUT_DIR/bench/results.json of "
                   "benchmarks/gpu_check.sh)")
    p.add_argument("--side-by-side", metavar="FILE",
                   help="add the CPU table of xpnet against PyTorch (the --json FILE of "
                   "benchmarks/bench_cpu_training.py)")


def run(args) -> int:
    """Write the report the parsed ``args`` ask for; errors propagate (``xpnet``'s main and
    :func:`main` turn them into one line on stderr)."""
    from xpnet.bench.report import write_report

    path = write_report(args.json, args.output, charts_dir=args.charts_dir,
                        charts=not args.no_charts, gpu_results=args.gpu_results,
                        side_by_side=args.side_by_side)
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    """``python -m xpnet.bench``: exit status 0, or 2 after one error line on stderr."""
    from xpnet.bench.results import ReportError

    p = argparse.ArgumentParser(
        prog="python -m xpnet.bench",
        description="Turn a pytest-benchmark JSON of benchmarks/ into a Markdown report with "
        "speed-up charts.",
    )
    configure_parser(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except (ReportError, OSError) as exc:
        print(f"xpnet bench: error: {exc}", file=sys.stderr)
        return 2
