"""The figures the report is about, computed from the cases of one run.

``headline`` picks DeepConvNet's training step and inference cases and returns the ratios the
report leads with (every ratio between two cases of the same run: on a shared machine only
those hold up). ``scaling_series`` and ``scaling_summary`` turn the batch-size and image-size
sweeps into points and into one sentence each on where the cost per sample stops falling, and
the likely reason (a call's fixed cost below that, memory traffic beyond the caches above).
"""

from __future__ import annotations

from xpnet.bench.results import Case, find
from xpnet.bench.units import cache_bytes, fmt_bytes, fmt_time

__all__ = ["caches_text", "headline", "per_sample", "scaling_series", "scaling_summary"]


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
    """The case's median divided by its batch (seconds per sample)."""
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
    l2 = cache_bytes(caches.get("L2"))
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
                         f"{fmt_bytes(act)} of activations and gradients ({caches_text(caches)}"
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
                     f"{caches_text(caches)})")
    elif cost[0] > 1.15 * min(cost):
        text += (": small images cost more per pixel, because the fixed cost of a call and "
                 "the edges of each plane (padding, partial vectors) weigh more")
    else:
        text += ": the cost is proportional to the number of pixels over this range"
    return text + "."


def caches_text(caches: dict) -> str:
    """'L2 cache 2.1 MB per core, L3 33.6 MB shared' from the sysfs sizes of the run's CPU."""
    l2, l3 = cache_bytes(caches.get("L2")), cache_bytes(caches.get("L3"))
    parts = [f"L2 cache {fmt_bytes(l2)} per core"] if l2 else []
    if l3:
        parts.append(f"L3 {fmt_bytes(l3)} shared")
    return ", ".join(parts)
