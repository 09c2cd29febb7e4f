"""The benchmark report: a pytest-benchmark JSON of ``benchmarks/`` turned into Markdown
(and, with matplotlib, PNG charts).

    pytest benchmarks/ --quick --benchmark-json=bench.json
    python -m xpnet.bench bench.json -o RESULTS.md        # or: xpnet bench bench.json -o ...

The report has
- the machine, library versions, the BLAS library and the kernel it picked, and the thread
  settings the numbers were measured with;
- the headline figures: for DeepConvNet's training step (batch 100, float32) the speed-up
  over the book's NumPy code, the time ratio to PyTorch, the achieved GFLOP/s and its
  fraction of the measured float32 GEMM peak; float16 vs float32 inference time and
  accuracy;
- time per sample against batch size and image size, with where it stops scaling;
- one table per comparison group: medians and speed-ups over the group's baseline.

Every number is a median of one run, and every ratio is between cases of that same run
(shared machines are noisy; ratios measured together are what holds up). Cases are found
through the ``extra_info`` the suite records (``kind``, ``impl``, ``dtype``, ``device``,
``batch``, ``flops``, ``baseline``, ``label``), so other pytest-benchmark JSONs render too:
their groups get tables, with the slowest case of a group as its baseline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Case",
    "ReportError",
    "load_cases",
    "group_cases",
    "speedups",
    "headline",
    "scaling_series",
    "scaling_summary",
    "render_markdown",
    "write_report",
    "main",
]


class ReportError(ValueError):
    """The input is not a pytest-benchmark JSON the report can use."""


# ---------------------------------------------------------------------------
# Reading the JSON
# ---------------------------------------------------------------------------


@dataclass
class Case:
    """One benchmark of the run: its group, label, timing statistics and extra_info."""

    name: str
    group: str
    label: str
    median: float  # seconds
    iqr: float
    rounds: int
    extra: dict = field(default_factory=dict)

    @property
    def baseline(self) -> bool:
        return bool(self.extra.get("baseline"))

    def get(self, key, default=None):
        return self.extra.get(key, default)

    @property
    def gflops(self) -> float | None:
        """Achieved GFLOP/s from the FLOP count the suite recorded, if any."""
        flops = self.extra.get("flops")
        return flops / self.median / 1e9 if flops and self.median > 0 else None

    def matches(self, **want) -> bool:
        return all(self.extra.get(k) == v for k, v in want.items())


def _label_from_name(name: str) -> str:
    """``test_x[a-b]`` -> ``a-b``; a name without parameters stays as it is."""
    return name[name.index("[") + 1 : -1] if "[" in name and name.endswith("]") else name


def load_json(path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(
            f"{path} does not exist; write it with `pytest benchmarks/ --benchmark-json={path}`"
        ) from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not JSON ({exc}); expected a pytest-benchmark JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ReportError(
            f"{path} is not a pytest-benchmark JSON (no 'benchmarks' list); write one with "
            "`pytest benchmarks/ --benchmark-json=FILE`"
        )
    if not data["benchmarks"]:
        raise ReportError(f"{path} holds no benchmarks (were they all skipped or deselected?)")
    return data


def load_cases(data: dict) -> list[Case]:
    cases = []
    for b in data["benchmarks"]:
        try:
            stats, name = b["stats"], b["name"]
            median = float(stats["median"])
        except (KeyError, TypeError, ValueError):
            raise ReportError(
                f"benchmark entry {b.get('name', b)!r} has no stats.median; expected a "
                "pytest-benchmark JSON"
            ) from None
        extra = dict(b.get("extra_info") or {})
        cases.append(
            Case(
                name=name,
                group=b.get("group") or extra.get("group") or "(no group)",
                label=extra.get("label") or _label_from_name(name),
                median=median,
                iqr=float(stats.get("iqr", 0.0)),
                rounds=int(stats.get("rounds", 0)),
                extra=extra,
            )
        )
    return cases


def group_cases(cases: list[Case]) -> dict[str, list[Case]]:
    """Cases by group, groups in the order of the run, each sorted fastest first."""
    groups: dict[str, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.group, []).append(case)
    return {g: sorted(cs, key=lambda c: c.median) for g, cs in groups.items()}


def baseline_of(group: list[Case]) -> Case:
    """The case marked as the group's baseline, else the slowest."""
    marked = [c for c in group if c.baseline]
    return marked[0] if marked else max(group, key=lambda c: c.median)


def speedups(group: list[Case]) -> dict[str, float]:
    """label -> baseline median / case median (how many times faster than the baseline)."""
    base = baseline_of(group)
    return {c.label: base.median / c.median for c in group if c.median > 0}


def find(cases, **want) -> Case | None:
    for case in cases:
        if case.matches(**want):
            return case
    return None


# ---------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------


def fmt_time(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.3g} µs"
    return f"{seconds * 1e9:.3g} ns"


def fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.3g}×"


def fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def _cache_bytes(text: str | None) -> int | None:
    """'2048K' -> 2097152 (sysfs cache sizes)."""
    if not text:
        return None
    text = text.strip().upper()
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    try:
        return int(float(text.rstrip("KMG")) * scale)
    except ValueError:
        return None


# ---------------------------------------------------------------------------
# The headline figures
# ---------------------------------------------------------------------------


def headline(cases: list[Case], model="DeepConvNet", batch=100) -> dict:
    """The figures the report leads with (entries are None when their cases did not run).

    CPU training step of ``model`` at ``batch``, float32: ``naive_over_xpnet`` (the book's
    NumPy float64 time / xpnet's), ``xpnet_over_torch`` (xpnet's time / PyTorch's: below 1
    means xpnet is faster), ``gflops`` and ``peak_fraction`` (of NumPy's float32 GEMM peak
    measured in the same run); the same for PyTorch against its own GEMM peak; inference in
    float16 vs float32 (time and, with real data, accuracy).
    """
    train = [c for c in cases if c.matches(kind="train-step", model=model, batch=batch)]
    book = find(train, impl="book", device="cpu")
    xp32 = find(train, impl="xpnet", dtype="float32", device="cpu")
    torch32 = find(train, impl="torch", dtype="float32", device="cpu")
    peaks = [c for c in cases if c.matches(kind="gemm-peak", dtype="float32")]
    np_peak = find(peaks, impl="numpy", device="cpu")
    torch_peak = find(peaks, impl="torch", device="cpu")

    def ratio(a, b):
        return a.median / b.median if a and b else None

    def fraction(case, peak):
        return case.gflops / peak.gflops if case and peak and case.gflops else None

    out = {
        "model": model,
        "batch": batch,
        "book": book,
        "xpnet": xp32,
        "torch": torch32,
        "naive_over_xpnet": ratio(book, xp32),
        "xpnet_over_torch": ratio(xp32, torch32),
        "gflops": xp32.gflops if xp32 else None,
        "peak": np_peak,
        "peak_gflops": np_peak.gflops if np_peak else None,
        "peak_fraction": fraction(xp32, np_peak),
        "torch_gflops": torch32.gflops if torch32 else None,
        "torch_peak_gflops": torch_peak.gflops if torch_peak else None,
        "torch_peak_fraction": fraction(torch32, torch_peak),
    }
    # GPU, when the run had one
    xp_gpu = find(train, impl="xpnet", dtype="float32", device="gpu")
    torch_gpu = find(train, impl="torch", dtype="float32", device="gpu")
    gpu_peak = find(peaks, impl="cupy", device="gpu")
    out.update(
        xpnet_gpu=xp_gpu,
        torch_gpu=torch_gpu,
        gpu_over_cpu=ratio(xp32, xp_gpu),
        xpnet_gpu_over_torch_gpu=ratio(xp_gpu, torch_gpu),
        gpu_peak_fraction=fraction(xp_gpu, gpu_peak),
    )
    # float16 vs float32 inference
    infer = [c for c in cases if c.matches(kind="inference", model=model, impl="xpnet")]
    acc = [c for c in cases if c.matches(kind="accuracy", model=model)]
    for device in ("cpu", "gpu"):
        times = {dt: find(infer, dtype=dt, device=device)
                 for dt in ("float64", "float32", "float16")}
        accuracy = {}
        for dt in ("float64", "float32", "float16"):
            c = find(acc, dtype=dt, device=device)
            if c is not None and c.get("accuracy") is not None:
                accuracy[dt] = (float(c.get("accuracy")), c.get("images"))
        out[f"inference_{device}"] = {
            "times": times,
            "f16_over_f32": ratio(times["float16"], times["float32"]),
            "accuracy": accuracy,
        }
    return out


def _headline_markdown(h: dict) -> list[str]:
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


# ---------------------------------------------------------------------------
# Scaling with batch size and image size
# ---------------------------------------------------------------------------


def scaling_series(cases: list[Case], kind: str) -> dict[str, list[tuple[int, Case]]]:
    """For ``kind`` 'batch' or 'image': series name (impl and device) -> [(x, case)] sorted."""
    series: dict[str, list[tuple[int, Case]]] = {}
    for c in cases:
        if c.get("kind") != f"scaling-{kind}":
            continue
        name = {"xpnet": "xpnet", "torch": "PyTorch"}.get(c.get("impl"), str(c.get("impl")))
        name += " GPU" if c.get("device") == "gpu" else ""
        series.setdefault(name, []).append((int(c.get(kind)), c))
    return {k: sorted(v, key=lambda p: p[0]) for k, v in series.items()}


def per_sample(case: Case) -> float:
    return case.median / int(case.get("batch", 1))


_FIXED_COST = {
    ("xpnet", "cpu"): "Python dispatch, waking the Numba and BLAS threads, allocations",
    ("torch", "cpu"): "operator dispatch, waking the OpenMP threads, allocations",
    ("xpnet", "gpu"): "Python dispatch and kernel launches",
    ("torch", "gpu"): "operator dispatch and kernel launches",
}


def scaling_summary(points: list[tuple[int, Case]], kind: str, caches: dict | None = None,
                    device: str | None = None) -> str:
    """A sentence on where time per sample (batch) or per pixel (image) stops improving, and
    the likely reason, from the measured points."""
    if len(points) < 2:
        return "Too few points to say how it scales."
    caches = caches or {}
    l2 = _cache_bytes(caches.get("L2"))
    if kind == "batch":
        xs = [x for x, _ in points]
        cost = [per_sample(c) for _, c in points]
        best_i = min(range(len(cost)), key=cost.__getitem__)
        best = cost[best_i]
        knee_i = next(i for i, v in enumerate(cost) if v <= 1.1 * best)
        fixed = points[0][1].median - best * xs[0]  # a call's cost beyond its samples' share
        first = points[0][1]
        reason = _FIXED_COST.get((first.get("impl"), device or first.get("device", "cpu")))
        why_small = "a call's fixed cost" + (f" ({reason})" if reason else "")
        if knee_i == 0:
            text = (f"Time per sample is within 10% of its best ({fmt_time(best)}, at batch "
                    f"{xs[best_i]}) already at batch {xs[0]}: {why_small} is small next to the "
                    "work of one sample, and larger batches buy nothing more")
        elif knee_i == len(cost) - 1:
            text = (f"Time per sample falls from {fmt_time(cost[0])} at batch {xs[0]} to "
                    f"{fmt_time(cost[-1])} at batch {xs[-1]} and is still falling there: "
                    f"{why_small} of about {fmt_time(fixed)} is not yet shared by enough "
                    "samples to be negligible")
        else:
            text = (f"Time per sample falls from {fmt_time(cost[0])} at batch {xs[0]} to "
                    f"within 10% of its best ({fmt_time(best)}, at batch {xs[best_i]}) from "
                    f"batch {xs[knee_i]} on: below that, {why_small} of about "
                    f"{fmt_time(fixed)} is shared by too few samples; beyond it the work "
                    "grows in proportion to the batch, so larger batches buy nothing more")
        last = cost[-1]
        if last > 1.15 * best and best_i < len(cost) - 1:
            act = points[-1][1].get("activation_bytes")
            text += f". At batch {xs[-1]} it is {last / best - 1:.0%} above its best"
            if act and l2:
                text += (f": the work per sample is the same, but a call then touches "
                         f"{fmt_bytes(act)} of activations and gradients ({_caches_text(caches)}"
                         "), so more of its time goes to moving data between memory and the "
                         "cores than to arithmetic")
        return text + "."
    # image size: per-pixel cost
    xs = [x for x, _ in points]
    cost = [per_sample(c) / (x * x) for x, c in points]
    growth = per_sample(points[-1][1]) / per_sample(points[0][1])
    pixels = (xs[-1] / xs[0]) ** 2
    text = (f"Time per sample grows {growth:.3g}× from {xs[0]}×{xs[0]} to {xs[-1]}×{xs[-1]} "
            f"pixels ({pixels:.3g}× the pixels); per pixel it goes from "
            f"{fmt_time(cost[0])} to {fmt_time(cost[-1])}")
    best_i = min(range(len(cost)), key=cost.__getitem__)
    if cost[-1] > 1.15 * cost[best_i] and best_i < len(cost) - 1:
        act = points[-1][1].get("activation_bytes")
        text += (f", lowest at {xs[best_i]}×{xs[best_i]}: beyond it the cost per pixel rises, "
                 "as the data a call touches outgrow the caches")
        if act and l2:
            text += (f" (at {xs[-1]}×{xs[-1]} a call touches {fmt_bytes(act)}; "
                     f"{_caches_text(caches)})")
    elif cost[0] > 1.15 * min(cost):
        text += (": small images cost more per pixel, because the fixed cost of a call and "
                 "the edges of each plane (padding, partial vectors) weigh more")
    else:
        text += ": the cost is proportional to the number of pixels over this range"
    return text + "."


def _caches_text(caches: dict) -> str:
    l2, l3 = _cache_bytes(caches.get("L2")), _cache_bytes(caches.get("L3"))
    parts = [f"L2 cache {fmt_bytes(l2)} per core"] if l2 else []
    if l3:
        parts.append(f"L3 {fmt_bytes(l3)} shared")
    return ", ".join(parts)


def _scaling_markdown(cases: list[Case], caches: dict, chart: str | None) -> list[str]:
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


# ---------------------------------------------------------------------------
# Machine, versions, BLAS, threads
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Group tables and charts
# ---------------------------------------------------------------------------


def _scaling_group_markdown(name: str, group: list[Case]) -> list[str]:
    kind = str(group[0].get("kind")).split("-", 1)[1]
    lines = [f"### {name}", "", "| case | median | IQR | rounds | per sample | GFLOP/s |",
             "|---|---:|---:|---:|---:|---:|"]
    order = sorted(group, key=lambda c: (c.label.split(f" {kind}=")[0], int(c.get(kind, 0))))
    for c in order:
        lines.append(f"| {c.label} | {fmt_time(c.median)} | {fmt_time(c.iqr)} | {c.rounds} | "
                     f"{fmt_time(per_sample(c))} | {f'{c.gflops:.3g}' if c.gflops else ''} |")
    return lines + [""]


def _group_markdown(name: str, group: list[Case]) -> list[str]:
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


def _comparison_groups(groups: dict[str, list[Case]]) -> dict[str, list[Case]]:
    """Groups that compare implementations (not the scaling series)."""
    return {g: cs for g, cs in groups.items()
            if not str(cs[0].get("kind", "")).startswith("scaling") and len(cs) > 1}


def draw_speedups(groups: dict[str, list[Case]], path) -> Path | None:
    """Horizontal bars of each group's speed-ups over its baseline, drawn from 1 on one shared
    log axis (bars to the left: slower than the baseline)."""
    from matplotlib.ticker import FixedLocator, NullFormatter

    from xpnet.plot import new_figure, save_figure

    groups = _comparison_groups(groups)
    if not groups:
        return None
    all_ups = [v for cs in groups.values() for v in speedups(cs).values()]
    lo, hi = min(min(all_ups), 1.0) / 1.6, max(max(all_ups), 1.0) * 1.8
    ticks = [t * 10.0**e for e in range(-3, 5) for t in (1, 2, 5) if lo <= t * 10.0**e <= hi]
    heights = [0.35 + 0.22 * len(cs) for cs in groups.values()]
    total = sum(heights) + 0.45 * len(groups) + 0.3
    fig = new_figure(figsize=(9, total))
    grid = fig.add_gridspec(len(groups), 1, height_ratios=heights, hspace=0.45 * len(groups)
                            / sum(heights) * 2.2, left=0.24, right=0.97,
                            top=1 - 0.35 / total, bottom=0.25 / total)
    for i, (name, cs) in enumerate(groups.items()):
        ax = fig.add_subplot(grid[i])
        ups = speedups(cs)
        labels = [c.label for c in cs][::-1]  # fastest on top
        values = [ups[label] for label in labels]
        colors = ["tab:gray" if v < 1.0 else "tab:blue" for v in values]
        ax.barh(range(len(values)), [v - 1.0 for v in values], left=1.0, color=colors,
                height=0.7)
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}×")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_yticks(range(len(values)), labels, fontsize=7)
        ax.axvline(1.0, color="black", linewidth=0.8)
        for y, v in enumerate(values):
            ax.text(v * (1.04 if v >= 1 else 0.96), y, f"{v:.3g}×", va="center",
                    ha="left" if v >= 1 else "right", fontsize=6.5)
        ax.set_title(f"{name}  (vs {baseline_of(cs).label})", fontsize=7.5, loc="left")
        ax.tick_params(axis="x", labelsize=6.5)
        ax.grid(True, axis="x", alpha=0.3)
    return save_figure(fig, path, dpi=100)


def draw_scaling(cases: list[Case], path) -> Path | None:
    """Time per sample against batch size and against image size (log-log)."""
    from xpnet.plot import new_figure, save_figure

    panels = [(k, scaling_series(cases, k)) for k in ("batch", "image")]
    panels = [(k, s) for k, s in panels if s]
    if not panels:
        return None
    from matplotlib.ticker import NullFormatter

    fig = new_figure(figsize=(5 * len(panels), 4), layout="constrained")
    for i, (kind, series) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), i)
        for name, points in series.items():
            xs = [x for x, _ in points]
            ax.plot(xs, [per_sample(c) * 1e3 for _, c in points], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size" if kind == "batch" else "image size (pixels per side)")
        ax.set_ylabel("time per sample (ms)")
        ax.set_xticks(xs, [str(x) for x in xs], fontsize=7)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        group = next(c.group for s in series.values() for _, c in s)
        ax.set_title(group.split(":", 1)[-1].strip(), fontsize=8)
    return save_figure(fig, path, dpi=100)


# ---------------------------------------------------------------------------
# The GPU section: results of benchmarks/gpu_bench.py (run by benchmarks/gpu_check.sh)
# ---------------------------------------------------------------------------


def gpu_table(results: dict) -> list[str]:
    """Markdown table rows from the ``results.json`` of ``benchmarks/gpu_bench.py``: machine,
    tests, CPU/GPU step parity, epoch times beside PyTorch and the CPU, real-data training,
    kernel times. Parts that are missing are left out; parts that failed show their error."""
    lines = ["| what | result |", "|---|---|"]
    env = results.get("env", {})
    if "gpu" in env:
        lines.append(f"| GPU | {env['gpu']} (cc {env['compute_capability']}), CuPy "
                     f"{env['cupy']}, numba-cuda {env.get('numba_cuda')}, torch "
                     f"{env.get('torch')} |")
    tests = results.get("tests", {})
    for label in ("gpu", "rest"):
        if tests.get(label):
            what = "GPU tests (pytest -m gpu)" if label == "gpu" else "the rest of the suite"
            lines.append(f"| {what} | {tests[label]} |")
    par = results.get("parity", {})
    if "grad_max_rel" in par:
        lines.append(
            f"| CPU vs GPU one DeepConvNet step (float32) | gradients {par['grad_max_rel']:.1e}, "
            f"after SGD {par['sgd_max_rel']:.1e}, after Adam {par['adam_max_rel']:.1e} (CPU "
            f"float32 vs float64: {par['adam_cpu_vs_float64_max_rel']:.1e}; GPU vs float64: "
            f"{par['adam_gpu_vs_float64_max_rel']:.1e}): {'pass' if par['passed'] else 'FAIL'} |")
    ep = results.get("epoch", {})
    if "seconds" in ep:
        lines.append(f"| xpnet GPU epoch ({ep['steps']} steps, batch {ep['batch']}) | "
                     f"{ep['seconds']:.2f} s ({ep['ms_per_step']:.2f} ms/step) |")
    th = results.get("torch", {})
    for label in ("fp32", "tf32"):
        if label in th:
            r = th[label]
            ratio = f", xpnet/torch {ep['seconds'] / r['seconds']:.2f}x" if "seconds" in ep else ""
            lines.append(f"| PyTorch CUDA epoch, {label} | {r['seconds']:.2f} s "
                         f"({r['ms_per_step']:.2f} ms/step){ratio} |")
    if "skipped" in th:
        lines.append(f"| PyTorch CUDA epoch | skipped: {th['skipped']} |")
    cpu = results.get("cpu", {})
    if "epoch_seconds_extrapolated" in cpu:
        speedup = (f", GPU speed-up {cpu['epoch_seconds_extrapolated'] / ep['seconds']:.1f}x"
                   if "seconds" in ep else "")
        lines.append(f"| xpnet CPU epoch (from {cpu['steps_timed']} steps) | "
                     f"{cpu['epoch_seconds_extrapolated']:.1f} s ({cpu['ms_per_step']:.1f} "
                     f"ms/step){speedup} |")
    tr = results.get("train", {})
    if "final_test_acc" in tr:
        per_epoch = tr.get("epoch_seconds") or []
        median = f"{statistics.median(per_epoch):.1f} s per epoch (median), " if per_epoch else ""
        lines.append(f"| xpnet train DeepConvNet, Fashion-MNIST, GPU, {tr['epochs']} epochs | "
                     f"{median}final test accuracy {tr['final_test_acc']:.4f} |")
    for row in results.get("kernels", {}).get("rows", []):
        if "im2col_ms" in row:
            lines.append(
                f"| {row['shape']} | im2col {row['im2col_ms']:.3f} ms (book slicing "
                f"{row['book_im2col_ms']:.3f}); col2im gather {row['col2im_gather_ms']:.3f} ms, "
                f"scatter {row['col2im_scatter_ms']:.3f} (book {row['book_col2im_ms']:.3f}) |")
        else:
            lines.append(f"| {row['shape']} | max-pool fwd {row['maxpool_forward_ms']:.3f} ms, "
                         f"bwd {row['maxpool_backward_ms']:.3f} ms |")
    if "im2col_call_overhead_us" in results.get("kernels", {}):
        lines.append(f"| one kernel call from Python (tiny input) | "
                     f"{results['kernels']['im2col_call_overhead_us']:.0f} us |")
    for part, r in results.items():
        if isinstance(r, dict) and "error" in r:
            lines.append(f"| {part} | ERROR: {r['error']} |")
    return lines


def gpu_markdown(results: dict, source: str) -> list[str]:
    """The report's section on an NVIDIA GPU (``source``: the results file it was read from)."""
    lines = [
        "## On an NVIDIA GPU",
        "",
        f"From `bash benchmarks/gpu_check.sh OUT_DIR` (its `bench/results.json`, kept as "
        f"`{source}`). GPU times are CUDA-event or synchronised wall times, medians for the "
        "kernels; an epoch is 600 steps of batch 100 (Adam) on 60,000 random MNIST-sized "
        "images held on the GPU, the mini-batches drawn on the device; the CPU epoch is "
        "the same steps on that machine's CPU, timed over a few and extrapolated.",
        "",
    ]
    lines += gpu_table(results)
    notes = list(results.get("notes", []))
    if results.get("train", {}).get("note"):
        notes.append(f"The real-data training row is {results['train']['note']}.")
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return lines + [""]


# ---------------------------------------------------------------------------
# The whole report
# ---------------------------------------------------------------------------


def render_markdown(data: dict, *, source: str = "bench.json", command: str | None = None,
                    charts: dict | None = None, gpu: tuple[dict, str] | None = None) -> str:
    """The report as Markdown. ``charts`` maps 'speedups'/'scaling' to paths relative to the
    report (omitted charts are not linked); ``gpu`` is (results, source) of a GPU check."""
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


def write_report(json_path, output, *, charts_dir=None, charts=True, command=None,
                 gpu_results=None) -> Path:
    """Read ``json_path``, write the Markdown report to ``output`` and, with matplotlib and
    ``charts``, ``speedups.png`` and ``scaling.png`` into ``charts_dir`` (default: next to
    the report); ``gpu_results`` (the results.json of a GPU check) adds its section. Files
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
    gpu = None
    if gpu_results:
        try:
            gpu = (json.loads(Path(gpu_results).read_text(encoding="utf-8")),
                   Path(gpu_results).as_posix())
        except (OSError, ValueError) as exc:
            raise ReportError(f"{gpu_results} is not a GPU check's results.json ({exc}); "
                              "expected OUT_DIR/bench/results.json of gpu_check.sh") from None
    text = render_markdown(data, source=Path(json_path).as_posix(), command=command,
                           charts=links, gpu=gpu)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(output, "w", encoding="utf-8") as f:
        f.write(text)
    return output


# ---------------------------------------------------------------------------
# Command line: python -m xpnet.bench, and `xpnet bench`
# ---------------------------------------------------------------------------


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("json", help="a pytest-benchmark JSON (pytest benchmarks/ --benchmark-json=F)")
    p.add_argument("-o", "--output", default="RESULTS.md", help="the Markdown report to write")
    p.add_argument("--charts-dir", metavar="DIR",
                   help="where to write speedups.png and scaling.png (default: beside the "
                   "report)")
    p.add_argument("--no-charts", action="store_true", help="write the Markdown only")
    p.add_argument("--gpu-results", metavar="FILE",
                   help="add the section of a GPU check (OUT_DIR/bench/results.json of "
                   "benchmarks/gpu_check.sh)")


def run(args) -> int:
    path = write_report(args.json, args.output, charts_dir=args.charts_dir,
                        charts=not args.no_charts, gpu_results=args.gpu_results)
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
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


if __name__ == "__main__":
    raise SystemExit(main())
