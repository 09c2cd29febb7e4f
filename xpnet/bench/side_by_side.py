"""The CPU side-by-side table of ``benchmarks/bench_cpu_training.py``: xpnet against PyTorch
(and, with ``--before``, against another xpnet tree), one row a case, in the report and on
the script's terminal alike.

The script saves its results with ``--json FILE``; ``python -m xpnet.bench ...
--side-by-side FILE`` puts them in the report. The file holds plain data::

    {"command": "...", "machine": ["CPU: ...", ...], "blas": ["..."],
     "rows": [{"case": "DeepConvNet train step, batch 8", "dtype": "float32",
               "xpnet": 17.4, "torch": 15.3, "before": 21.2}, ...],   # median ms
     "accuracy": {"digits": 10000, "float16": 0.9758, "float32": 0.9758} | null,
     "memory": [{"framework": "xpnet", "step_peak_rise_mib": 33.3}, ...]}

A float16 row times xpnet's float16 inference against its float32 inference
(``"xpnet float32"``, ``"before float32"``) instead of against PyTorch.
"""

from __future__ import annotations

__all__ = ["side_by_side_markdown", "table_lines"]


def table_lines(rows: list[dict], before: bool) -> list[str]:
    """The Markdown tables of the rows (ms; ratios of medians); ``before``: the columns of
    the ``--before`` tree too."""
    head = "| case | xpnet ms | PyTorch ms | xpnet / PyTorch |"
    rule = "|---|---:|---:|---:|"
    if before:
        head += " xpnet before ms | before / PyTorch |"
        rule += "---:|---:|"
    lines = [head, rule]
    naive = []
    for r in rows:
        if r["dtype"] == "float16":
            continue
        row = f"| {r['case']} | {r['xpnet']:.2f} | {r['torch']:.2f} | " \
              f"**{r['xpnet'] / r['torch']:.2f}** |"
        if before:
            row += f" {r['before']:.2f} | {r['before'] / r['torch']:.2f} |"
        lines.append(row)
        if "naive" in r:
            naive.append(f"{r['case']}: the book's NumPy code {r['naive']:.0f} ms, "
                         f"{r['naive'] / r['xpnet']:.1f}x xpnet's time")
    for r in rows:
        if r["dtype"] != "float16":
            continue
        lines += ["", "| float16 vs float32 | float16 ms | float32 ms | float16 / float32 |"
                  + (" before: float16 / float32 |" if before else ""),
                  "|---|---:|---:|---:|" + ("---:|" if before else ""),
                  f"| {r['case']} | {r['xpnet']:.2f} | {r['xpnet float32']:.2f} | "
                  f"**{r['xpnet'] / r['xpnet float32']:.2f}** |"
                  + (f" {r['before'] / r['before float32']:.2f} |" if before else "")]
    return lines + ([""] + naive if naive else [])


def side_by_side_markdown(results: dict, source: str) -> list[str]:
    """The report's section of a ``bench_cpu_training.py --json`` file (read from ``source``)."""
    rows = results["rows"]
    before = bool(rows) and all("before" in r for r in rows)
    lines = [
        "## xpnet and PyTorch side by side on the CPU",
        "",
        f"From `{results.get('command', 'benchmarks/bench_cpu_training.py')}` (kept as "
        f"`{source}`): training steps (forward, backward, Adam) and inference of the book's "
        "two convolutional networks at the batch sizes a reader uses, float32, the "
        "contenders timed in interleaved rounds of one run (medians; ratios of medians), and "
        "DeepConvNet's float16 inference against its float32 inference (book 8.3.4).",
        "",
    ]
    lines += [f"- {line}" for line in results.get("machine", [])]
    lines += [f"- BLAS: {'; '.join(results['blas'])}"] if results.get("blas") else []
    lines += [""] + table_lines(rows, before)
    accuracy = results.get("accuracy")
    if accuracy:
        lines += ["", f"DeepConvNet with the book's weights on {accuracy['digits']} test "
                      f"digits: float16 {accuracy['float16']:.2%}, float32 "
                      f"{accuracy['float32']:.2%}."]
    memory = results.get("memory")
    if memory:
        lines += ["", "| DeepConvNet train step, batch 100 | peak RSS rise (MiB) |", "|---|---:|"]
        lines += [f"| {m['framework']} | {m['step_peak_rise_mib']:.1f} |" for m in memory]
    return lines + [""]
