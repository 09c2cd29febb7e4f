"""The report's GPU section, from the ``results.json`` that ``benchmarks/gpu_bench.py`` writes
(run by ``benchmarks/gpu_check.sh`` on a machine with an NVIDIA GPU).

The file is a dict of parts (``env``, ``tests``, ``parity``, ``epoch``, ``torch``, ``cpu``,
``graphs``, ``cnns``, ``train``, ``kernels``), each optional: a part that did not run is
left out, a part that failed holds ``{"error": message}`` and shows as such. Ratios are
formed only between parts that are both present, never against a figure from another run.
"""

from __future__ import annotations

import statistics

__all__ = ["gpu_markdown", "gpu_table"]


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
    lines += _graph_rows(results.get("graphs", {}))
    lines += _cnn_rows(results.get("cnns", {}))
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
        graphs = tr.get("cuda_graphs") or {}
        how = ("" if not graphs else "; CUDA graphs" if graphs.get("used")
               else f"; eager steps ({graphs.get('reason')})")
        lines.append(f"| xpnet train DeepConvNet, Fashion-MNIST, GPU, {tr['epochs']} epochs | "
                     f"{median}final test accuracy {tr['final_test_acc']:.4f}{how} |")
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


def _cnn_rows(cnns: dict) -> list[str]:
    """The cnns part: per representative CNN, the Trainer's step beside PyTorch's (and the
    ratio), how the steps ran, and the float32 step parity with the CPU's own noise."""
    lines = []
    for row in cnns.get("rows", []):
        cells = []
        xp, th = row.get("xpnet", {}), row.get("torch_fp32", {})
        for label, run in (("xpnet", xp), ("PyTorch fp32", th)):
            cells.append(f"{label} {run['ms_per_step']:.2f} ms/step" if "ms_per_step" in run
                         else f"{label} {run.get('error') or run.get('skipped') or 'not run'}")
        if "ms_per_step" in xp and "ms_per_step" in th:
            cells.append(f"xpnet/PyTorch {xp['ms_per_step'] / th['ms_per_step']:.2f}x")
        status = xp.get("cuda_graphs") or {}
        if status:
            cells.append("CUDA graphs" if status.get("used")
                         else f"eager steps ({status.get('reason')})")
        par = row.get("parity", {})
        if "grad_max_rel" in par:
            noise = par.get("grad_float32_noise_max_rel")
            cells.append(
                f"one float32 step vs the CPU: gradients {par['grad_max_rel']:.1e}"
                + (f" (the CPU's own move under a one-ulp nudge of x: {noise:.1e})"
                   if noise is not None else "")
                + f", after Adam {par['adam_max_rel']:.1e}: "
                + ("pass" if par["passed"] else "FAIL"))
        elif "error" in par:
            cells.append(f"parity ERROR: {par['error']}")
        lines.append(f"| {row['model']} training step, batch {cnns.get('batch')} | "
                     f"{'; '.join(cells)} |")
    return lines


def _graph_rows(graphs: dict) -> list[str]:
    """The graphs part: per model and batch, an epoch (from the steps timed) with CUDA graphs,
    eagerly and in PyTorch (fp32), the GPU's busy time per replay against the wall time per
    step, and the launches a step makes; then the per-call launch cost."""
    lines = []
    for row in graphs.get("rows", []):
        runs = {k: row.get(k, {}) for k in ("xpnet_graphs", "xpnet_eager", "torch_fp32")}
        cells = []
        for label, key in (("graphs", "xpnet_graphs"), ("eager", "xpnet_eager"),
                           ("PyTorch fp32", "torch_fp32")):
            run = runs[key]
            cells.append(f"{label} {run['epoch_seconds']:.2f} s ({run['ms_per_step']:.2f} ms/step)"
                         if "epoch_seconds" in run else
                         f"{label} {run.get('error') or run.get('skipped') or 'not run'}")
        g, e, t = (runs[k].get("epoch_seconds") for k in runs)
        if g and t:
            cells.append(f"xpnet/PyTorch {g / t:.2f}x" + (f" (eager {e / t:.2f}x)" if e else ""))
        status = runs["xpnet_graphs"].get("cuda_graphs") or {}
        if status and not status.get("used"):
            cells.append(f"graphs did not run: {status.get('reason')}")
        if "gpu_busy_ms_per_step" in runs["xpnet_graphs"]:
            cells.append(f"GPU busy {runs['xpnet_graphs']['gpu_busy_ms_per_step']:.2f} ms of "
                         f"{runs['xpnet_graphs']['ms_per_step']:.2f} ms per replayed step")
        kernels = runs["xpnet_graphs"].get("graph_nodes", {}).get("kernel")
        if kernels:
            cells.append(f"{kernels} kernels per step: {kernels} launches eagerly "
                         f"({runs['xpnet_graphs'].get('numba_launches_eager_step')} of them "
                         "Numba's), 1 graph launch replayed")
        steps = runs["xpnet_graphs"].get("steps") or runs["xpnet_eager"].get("steps")
        timed = f", {steps} steps timed" if steps else ""
        lines.append(f"| {row['model']} epoch, batch {row['batch']} ({row['epoch_steps']} "
                     f"steps{timed}) | {'; '.join(cells)} |")
    cost = graphs.get("launch_cost", {})
    if cost and not ("skipped" in cost or "error" in cost):
        figures = ", ".join(f"{k} {v:.1f}" for k, v in cost.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool))
        lines.append(f"| one kernel launch, host cost per call (us) | {figures} |")
    elif cost:
        lines.append(f"| one kernel launch, host cost per call | "
                     f"{cost.get('skipped') or 'ERROR: ' + str(cost.get('error'))} |")
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
