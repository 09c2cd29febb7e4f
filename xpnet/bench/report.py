"""Writing the report: read the JSON, draw the charts (with matplotlib, else the Markdown
alone), render the Markdown and write it atomically. The Markdown names the command that
regenerates it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from xpnet.bench.charts import draw_scaling, draw_speedups
from xpnet.bench.markdown import render_markdown
from xpnet.bench.results import ReportError, group_cases, load_cases, load_json

__all__ = ["write_report"]


def write_report(json_path, output, *, charts_dir=None, charts=True, command=None,
                 gpu_results=None, side_by_side=None) -> Path:
    """Read ``json_path``, write the Markdown report to ``output`` and, with matplotlib and
    ``charts``, ``speedups.png`` and ``scaling.png`` into ``charts_dir`` (default: next to
    the report); ``gpu_results`` (the results.json of a GPU check) and ``side_by_side``
    (the ``--json`` of ``benchmarks/bench_cpu_training.py``) add their sections. Files
    are written atomically. Returns the report's path."""
    from xpnet.io import atomic_write

    data = load_json(json_path)
    output = Path(output)
    cases = load_cases(data)
    links = {}
    if charts:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("xpnet bench: matplotlib is not installed; writing the report without charts",
                  file=sys.stderr)
        else:
            folder = Path(charts_dir) if charts_dir else output.parent
            folder.mkdir(parents=True, exist_ok=True)
            for key, draw in (("speedups", lambda p: draw_speedups(group_cases(cases), p)),
                              ("scaling", lambda p: draw_scaling(cases, p))):
                written = draw(folder / f"{key}.png")
                if written is not None:
                    links[key] = Path(os.path.relpath(written, output.parent)).as_posix()
    if command is None:  # how to regenerate this very report
        command = f"python -m xpnet.bench {Path(json_path).as_posix()} -o {output.as_posix()}"
        if charts_dir:
            command += f" --charts-dir {Path(charts_dir).as_posix()}"
        if not charts:
            command += " --no-charts"
        if gpu_results:
            command += f" --gpu-results {Path(gpu_results).as_posix()}"
        if side_by_side:
            command += f" --side-by-side {Path(side_by_side).as_posix()}"
    gpu = _extra_results(gpu_results, "a GPU check's results.json",
                         "OUT_DIR/bench/results.json of gpu_check.sh")
    side = _extra_results(side_by_side, "a side-by-side results file",
                          "the --json FILE of benchmarks/bench_cpu_training.py", key="rows")
    text = render_markdown(data, source=Path(json_path).as_posix(), command=command,
                           charts=links, gpu=gpu, side_by_side=side)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(output, "w", encoding="utf-8") as f:
        f.write(text)
    return output


def _extra_results(path, what: str, expected: str, key: str | None = None):
    """``(results, path)`` of an extra section's JSON file, None without one; a file that
    is not such a JSON object (lacking ``key`` if given) is one ReportError."""
    if not path:
        return None
    try:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(results, dict) or (key is not None and key not in results):
            raise ValueError(f"no {key!r} entry" if key else "not a JSON object")
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path} is not {what} ({exc}); expected {expected}") from None
    return results, Path(path).as_posix()
