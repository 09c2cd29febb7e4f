"""The report as Markdown: the machine and its settings, the headline figures, how the cost
grows with batch and image size, then one table per benchmark group.

Every section is a function returning a list of lines; :func:`render_markdown` puts them in
order. Charts are only linked here (``charts`` maps their names to paths relative to the
report); ``xpnet.bench.charts`` draws them.
"""

from __future__ import annotations

from xpnet.bench.analysis import headline, per_sample, scaling_series, scaling_summary
from xpnet.bench.gpu import gpu_markdown
from xpnet.bench.results import Case, baseline_of, group_cases, load_cases, speedups
from xpnet.bench.side_by_side import side_by_side_markdown
from xpnet.bench.units import fmt_ratio, fmt_time

__all__ = ["render_markdown"]


def _headline_markdown(h: dict) -> list[str]:
    """The figures of ``analysis.headline`` as a table, then float16 inference per device."""
    lines = [f"## {h['model']} at batch {h['batch']}", ""]
    if h["xpnet"] is None:
        return lines + [f"No float32 CPU training step of {h['model']} in this run.", ""]
    rows = [("xpnet training step (forward, backward, Adam), float32, CPU",
             fmt_time(h["xpnet"].median))]
    if h["book"]:
        rows.append(("the book's NumPy code (float64), same step", fmt_time(h["book"].median)))
        rows.append(("**speed-up of xpnet over the book's code** (book / xpnet)",
                     f"**{fmt_ratio(h['naive_over_xpnet'])}**"))
    if h["torch"]:
        rows.append(("PyTorch, same architecture and optimizer, float32, CPU",
                     fmt_time(h["torch"].median)))
        rows.append(("**xpnet / PyTorch time ratio** (below 1: xpnet is faster)",
                     f"**{h['xpnet_over_torch']:.3g}**"))
    if h["gflops"] is not None:
        rows.append(("xpnet achieved GEMM throughput (FLOP model / median)",
                     f"{h['gflops']:.3g} GFLOP/s"))
    if h["peak_gflops"] is not None:
        n = h["peak"].get("n")
        rows.append((f"measured float32 GEMM peak (NumPy sgemm {n}×{n}, same run)",
                     f"{h['peak_gflops']:.3g} GFLOP/s"))
        rows.append(("**fraction of the float32 GEMM peak** reached by xpnet's step",
                     f"**{h['peak_fraction']:.1%}**"))
    if h["torch_gflops"] is not None and h["torch_peak_fraction"] is not None:
        rows.append(("PyTorch: achieved / its own sgemm peak",
                     f"{h['torch_gflops']:.3g} / {h['torch_peak_gflops']:.3g} GFLOP/s "
                     f"({h['torch_peak_fraction']:.1%})"))
    if h["xpnet_gpu"] is not None:
        rows.append(("xpnet training step on the GPU, float32", fmt_time(h["xpnet_gpu"].median)))
        rows.append(("GPU speed-up over xpnet on the CPU", fmt_ratio(h["gpu_over_cpu"])))
        if h["xpnet_gpu_over_torch_gpu"] is not None:
            rows.append(("xpnet GPU / PyTorch CUDA time ratio",
                         f"{h['xpnet_gpu_over_torch_gpu']:.3g}"))
        if h["gpu_peak_fraction"] is not None:
            rows.append(("fraction of the GPU's float32 GEMM peak (CuPy sgemm)",
                         f"{h['gpu_peak_fraction']:.1%}"))
    lines += ["| figure | value |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    flops = h["xpnet"].get("flops")
    if flops:
        lines += ["", f"The FLOP model (`xpnet.flops`) counts {flops / 1e9:.3g} GFLOP of matrix "
                  "products per step (2·M·N·K per GEMM: forward, dW and dx of every Convolution "
                  "and Affine layer); elementwise work, pooling and im2col data movement are "
                  "not counted, so the fraction is a lower bound on how busy the cores are."]
    lines.append("")
    for device in ("cpu", "gpu"):
        inf = h[f"inference_{device}"]
        if not any(inf["times"].values()) and not inf["accuracy"]:
            continue
        where = "CPU" if device == "cpu" else "GPU"
        lines += [f"### Inference in float64, float32, float16 ({where}, book 8.3.4)", "",
                  f"| dtype | time per batch of {h['batch']} | accuracy (book's trained weights, "
                  "real MNIST digits) |", "|---|---:|---:|"]
        for dt in ("float64", "float32", "float16"):
            c, acc = inf["times"][dt], inf["accuracy"].get(dt)
            if c is None and acc is None:
                continue
            acc_text = f"{acc[0]:.2%} on {acc[1]} images" if acc else "not measured"
            lines.append(f"| {dt} | {fmt_time(c.median) if c else 'n/a'} | {acc_text} |")
        lines.append("")
        if inf["f16_over_f32"] is not None:
            lines.append(f"float16 takes {inf['f16_over_f32']:.3g}× the float32 time.")
        if "float16" in inf["accuracy"] and "float32" in inf["accuracy"]:
            d = (inf["accuracy"]["float16"][0] - inf["accuracy"]["float32"][0]) * 100
            lines.append(f"float16 accuracy differs from float32 by {d:+.2f} points.")
        elif not inf["accuracy"]:
            lines.append("Accuracy on real digits was not measured (the shared MNIST digits "
                         "or the book's weights were absent).")
        lines.append("")
    return lines


def _scaling_markdown(cases: list[Case], caches: dict, chart: str | None) -> list[str]:
    """Per sweep (batch, image size): a table of time per sample, one sentence per series."""
    lines = []
    for kind, title in (("batch", "batch size"), ("image", "image size")):
        series = scaling_series(cases, kind)
        if not series:
            continue
        group = next(c.group for s in series.values() for _, c in s)
        xs = sorted({x for s in series.values() for x, _ in s})
        names = list(series)
        lines += [f"### Time per sample against {title}", "", f"Group: `{group}`.", ""]
        unit = "per sample" if kind == "batch" else "per sample (per pixel)"
        head = f"| {kind} | " + " | ".join(f"{n} {unit}" for n in names) + " |"
        lines += [head, "|---" * (len(names) + 1) + "|"]
        for x in xs:
            cells = []
            for n in names:
                c = dict(series[n]).get(x)
                if c is None:
                    cells.append("")
                elif kind == "batch":
                    cells.append(f"{fmt_time(per_sample(c))} ({c.gflops:.3g} GFLOP/s)"
                                 if c.gflops else fmt_time(per_sample(c)))
                else:
                    cells.append(f"{fmt_time(per_sample(c))} ({fmt_time(per_sample(c) / x**2)})")
            label = f"{x}×{x}" if kind == "image" else str(x)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
        for n in names:
            lines.append(f"- **{n}**: {scaling_summary(series[n], kind, caches)}")
        lines.append("")
    if lines and chart:
        lines += [f"![time per sample against batch and image size]({chart})", ""]
    return lines


def _blas_threads_by_impl(cases: list[Case]) -> dict[str, set]:
    """impl -> the NumPy BLAS thread counts its CPU cases ran with (recorded per case)."""
    names = {"book": "the book's NumPy code", "xpnet": "xpnet (outside its kernels)",
             "numpy": "NumPy GEMM peak"}
    out: dict[str, set] = {}
    for c in cases:
        if (c.get("blas_threads") is None or c.get("device", "cpu") != "cpu"
                or c.get("kind") == "kernel"):  # im2col & co. call no BLAS
            continue
        name = names.get(c.get("impl"), str(c.get("impl", "?")))
        out.setdefault(name, set()).add(int(c.get("blas_threads")))
    return out


def _machine_markdown(data: dict) -> list[str]:
    """What the numbers were measured on: CPU, caches, libraries, BLAS, threads, load."""
    mi = data.get("machine_info") or {}
    info = mi.get("xpnet") or {}
    commit = data.get("commit_info") or {}
    lines = ["## Machine and settings", "", "| | |", "|---|---|"]

    def row(k, v):
        lines.append(f"| {k} | {v} |")

    cpu = info.get("cpu") or (mi.get("cpu") or {}).get("brand_raw") or mi.get("processor")
    row("CPU", f"{cpu}, {info.get('cpus_usable', '?')} usable CPUs")
    caches = info.get("cpu_caches") or {}
    if caches:
        row("caches (per CPU 0)", ", ".join(f"{k} {v}" for k, v in caches.items()))
    row("system", f"{mi.get('system', '?')} {mi.get('release', '')}, Python "
        f"{info.get('python') or mi.get('python_version', '?')}")
    versions = info.get("versions") or {}
    if versions:
        row("libraries", ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    for pool in info.get("blas") or []:
        if pool.get("user_api") == "blas":
            row(f"BLAS ({pool.get('owner', '?')})",
                f"{pool.get('internal_api')} {pool.get('version')}, kernel "
                f"**{pool.get('architecture')}**, threads: {pool.get('num_threads')} at the end "
                f"of the run ({pool.get('threading_layer')})")
    threads = info.get("threads") or {}
    if threads:
        row("xpnet threads", f"{threads.get('xpnet kernels')} for the kernels; NumPy's BLAS "
            f"{threads.get('numpy BLAS (outside the kernels)')} outside them; Numba threading "
            f"layer {threads.get('numba_threading_layer')}")
    per_impl = _blas_threads_by_impl(load_cases(data))
    if per_impl:
        row("BLAS threads during the cases", ", ".join(
            f"{impl}: {'/'.join(str(n) for n in sorted(ns))}" for impl, ns in per_impl.items()))
    torch = info.get("torch")
    if torch:
        yes = {True: "yes", False: "no"}
        row("PyTorch", f"{torch.get('version')}, {torch.get('num_threads')} threads, MKL "
            f"{yes[bool(torch.get('mkl'))]}, oneDNN {yes[bool(torch.get('mkldnn'))]}, CUDA "
            f"{yes[bool(torch.get('cuda'))]}")
    env = info.get("env") or {}
    if env:
        row("environment", ", ".join(f"`{k}`={v if v is not None else 'unset'}"
                                     for k, v in env.items()))
    gpu = info.get("gpu")
    if gpu:
        row("GPU", f"{gpu.get('name')}, {gpu.get('memory_gib')} GiB" if gpu.get("available")
            else f"none ({gpu.get('reason')})")
    load0, load1 = info.get("load_average_start"), info.get("load_average_end")
    if load0 or load1:
        fmt = lambda la: "/".join(f"{v:.2f}" for v in la) if la else "?"  # noqa: E731
        row("load average (1/5/15 min) before / after", f"{fmt(load0)} / {fmt(load1)}")
    if commit.get("id"):
        row("commit", f"{commit['id'][:12]}" + (" (with uncommitted changes)"
                                                if commit.get("dirty") else ""))
    row("run", f"{info.get('mode', '?')} mode, {data.get('datetime', '?')}")
    if info.get("command"):
        row("command", f"`{info['command']}`")
    return lines + [""]


def _scaling_group_markdown(name: str, group: list[Case]) -> list[str]:
    """A sweep's group, ordered by series then size (no speed-ups: the sizes differ)."""
    kind = str(group[0].get("kind")).split("-", 1)[1]
    lines = [f"### {name}", "", "| case | median | IQR | rounds | per sample | GFLOP/s |",
             "|---|---:|---:|---:|---:|---:|"]
    order = sorted(group, key=lambda c: (c.label.split(f" {kind}=")[0], int(c.get(kind, 0))))
    for c in order:
        lines.append(f"| {c.label} | {fmt_time(c.median)} | {fmt_time(c.iqr)} | {c.rounds} | "
                     f"{fmt_time(per_sample(c))} | {f'{c.gflops:.3g}' if c.gflops else ''} |")
    return lines + [""]


def _group_markdown(name: str, group: list[Case]) -> list[str]:
    """A comparison group: medians and speed-ups over its baseline, fastest first."""
    if str(group[0].get("kind", "")).startswith("scaling-"):
        return _scaling_group_markdown(name, group)
    base = baseline_of(group)
    ups = speedups(group)
    show_flops = any(c.gflops for c in group)
    show_batch = any(c.get("batch") for c in group) and not name.startswith("accuracy")
    head = "| case | median | IQR | rounds | speed-up vs " + base.label + " |"
    sep = "|---|---:|---:|---:|---:|"
    if show_batch:
        head, sep = head + " per sample |", sep + "---:|"
    if show_flops:
        head, sep = head + " GFLOP/s |", sep + "---:|"
    if any(c.get("accuracy") is not None for c in group):
        head, sep = head + " accuracy |", sep + "---:|"
    lines = [f"### {name}", "", head, sep]
    for c in group:
        cells = [c.label + (" (baseline)" if c is base else ""), fmt_time(c.median),
                 fmt_time(c.iqr), str(c.rounds), fmt_ratio(ups.get(c.label))]
        if show_batch:
            cells.append(fmt_time(per_sample(c)) if c.get("batch") else "")
        if show_flops:
            cells.append(f"{c.gflops:.3g}" if c.gflops else "")
        if "accuracy |" in head:
            acc = c.get("accuracy")
            cells.append(f"{acc:.2%}" if acc is not None else "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def render_markdown(data: dict, *, source: str = "bench.json", command: str | None = None,
                    charts: dict | None = None, gpu: tuple[dict, str] | None = None,
                    side_by_side: tuple[dict, str] | None = None) -> str:
    """The report as Markdown. ``charts`` maps 'speedups'/'scaling' to paths relative to the
    report (omitted charts are not linked); ``gpu`` is (results, source) of a GPU check,
    ``side_by_side`` of ``benchmarks/bench_cpu_training.py --json``."""
    charts = charts or {}
    cases = load_cases(data)
    groups = group_cases(cases)
    caches = ((data.get("machine_info") or {}).get("xpnet") or {}).get("cpu_caches") or {}
    command = command or f"python -m xpnet.bench {source} -o RESULTS.md"
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `{command}` from the pytest-benchmark run `{source}`; do not edit by "
        "hand. Every time is the median of that run's rounds; every ratio is between two "
        "cases of the same run.",
        "",
    ]
    lines += _machine_markdown(data)
    lines += _headline_markdown(headline(cases))
    if side_by_side is not None:
        lines += side_by_side_markdown(*side_by_side)
    if gpu is not None:
        lines += gpu_markdown(*gpu)
    scaling = _scaling_markdown(cases, caches, charts.get("scaling"))
    if scaling:
        lines += ["## How the cost grows", ""] + scaling
    lines += ["## All groups", ""]
    if charts.get("speedups"):
        lines += [f"![speed-ups over each group's baseline]({charts['speedups']})", ""]
    lines += ["Speed-up = the baseline's median / the case's median (above 1: faster). "
              "GFLOP/s = the case's GEMM FLOPs (`xpnet.flops`) / its median.", ""]
    for name, group in groups.items():
        lines += _group_markdown(name, group)
    return "\n".join(lines).rstrip() + "\n"
