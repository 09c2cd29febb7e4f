"""CPU training step and inference, xpnet vs PyTorch vs the book's NumPy code, side by side.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_cpu_training.py
    python benchmarks/bench_cpu_training.py --models DeepConvNet --rounds 30 --no-naive
    python benchmarks/bench_cpu_training.py --memory-only

Timing: batch 100, float32 for xpnet and PyTorch, float64 for the book's code (as ch. 7
writes it); ``--threads n`` threads for each (xpnet's kernel workers, PyTorch's pool, the
BLAS under the book's code). A training step is forward + backward + Adam (lr 0.001);
inference is the forward pass in evaluation mode. The contenders are timed *interleaved*
-- each round times each of them once, in an order that rotates from round to round -- so
a burst of load on this shared machine hits them alike; the table gives medians over the
rounds and the ratios of the medians.

Peak memory of one DeepConvNet training step: each framework in its own fresh process,
warmed up by two steps of a throw-away network, then the first step of a fresh network,
as the rise of the process's peak resident set (VmHWM, reset through
/proc/self/clear_refs just before the step) over its resident set before the step.
glibc's mmap threshold is pinned at 64 KiB in those processes (MALLOC_MMAP_THRESHOLD_),
so every large buffer is mapped when allocated and unmapped when freed for both
frameworks alike: the resident set then follows live memory instead of the allocator's
cached free lists. What the warm-up left (JIT code, xpnet's per-thread scratch buffers,
PyTorch's allocator state) and the weights are in the baseline; the figure is what one
step adds at its peak: activations kept for backward, gradients, Adam's moments (created
by the first update) and temporaries. For xpnet
the NumPy-allocation peak seen by tracemalloc is printed as a cross-check.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for path in (str(REPO), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

BATCH = 100


def blas_report() -> list[str]:
    from threadpoolctl import threadpool_info

    lines = []
    for pool in threadpool_info():
        lines.append(
            f"{pool['user_api']}: {pool['internal_api']} {pool.get('version') or ''} "
            f"kernel={pool.get('architecture')} threads={pool['num_threads']} "
            f"({Path(pool['filepath']).name})"
        )
    return lines


def batch(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((BATCH, 1, 28, 28), dtype=np.float32)  # pixel-like values in [0, 1)
    t = rng.integers(0, 10, BATCH)
    return x, t


def contenders(model: str, naive: bool, threads: int = 1):
    """{name: (train_step, infer)} for one architecture; ``threads`` for the book's BLAS."""
    import torch
    import torch_nets
    from threadpoolctl import threadpool_limits

    from xpnet import models, optimizers

    x, t = batch()
    out = {}

    net = getattr(models, model)(dtype=np.float32)
    opt = optimizers.Adam(lr=0.001)
    out["xpnet"] = (lambda: opt.update(net.params, net.gradient(x, t)),
                    lambda: net.predict(x, train_flg=False))

    tnet = {"SimpleConvNet": torch_nets.simple_convnet,
            "DeepConvNet": torch_nets.deep_convnet}[model]()
    step = torch_nets.train_step_fn(tnet)
    xt, tt = torch.from_numpy(x), torch.from_numpy(t)
    out["torch"] = (lambda: step(xt, tt), lambda: torch_nets.infer(tnet, xt))

    if naive:
        import naive_book

        np.random.seed(0)  # noqa: NPY002 - the book's code draws from the global generator
        bnet, bopt = getattr(naive_book, model)(), naive_book.Adam()
        x64 = x.astype(np.float64)

        def with_blas(fn):  # the book's code as its readers run it: BLAS on every thread
            def run():
                with threadpool_limits(limits=threads, user_api="blas"):
                    return fn()
            return run

        out["naive"] = (with_blas(lambda: bopt.update(bnet.params, bnet.gradient(x64, t))),
                        with_blas(lambda: bnet.predict(x64)))
    return out


def timed_rounds(fns: dict, rounds: int, slow_every: dict) -> dict:
    """Interleaved timing: each round calls every function once (a slow one only every
    ``slow_every[name]`` rounds). Returns {name: [seconds, ...]}."""
    for fn in fns.values():  # warm-up: JIT compilation, buffers, allocator
        fn()
        fn()
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        # the order rotates, so no contender always runs right after the book's code
        # (whose large float64 temporaries evict the caches)
        for name in names[r % len(names):] + names[: r % len(names)]:
            fn = fns[name]
            if r % slow_every.get(name, 1):
                continue
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def run_timing(models, rounds, naive, threads):
    rows = []
    for model in models:
        cands = contenders(model, naive, threads)
        for phase, idx in (("train step", 0), ("inference", 1)):
            fns = {name: pair[idx] for name, pair in cands.items()}
            slow = {"naive": max(1, rounds // 5)}  # the book's code: 5 rounds are enough
            times = timed_rounds(fns, rounds, slow)
            med = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
            spread = {name: (min(ts) * 1e3, max(ts) * 1e3) for name, ts in times.items()}
            rows.append((model, phase, med, spread, {k: len(v) for k, v in times.items()}))
            print(f"  {model:13s} {phase:10s} " + "  ".join(
                f"{name} {med[name]:8.1f} ms (n={len(times[name])})" for name in med), flush=True)
    return rows


def print_table(rows):
    print()
    print("| model | phase | xpnet ms | PyTorch ms | book NumPy ms | xpnet/PyTorch | "
          "book/xpnet |")
    print("|---|---|---|---|---|---|---|")
    for model, phase, med, _spread, _n in rows:
        naive = med.get("naive")
        print(f"| {model} | {phase} | {med['xpnet']:.1f} | {med['torch']:.1f} | "
              + (f"{naive:.0f}" if naive else "-")
              + f" | {med['xpnet'] / med['torch']:.2f} | "
              + (f"{naive / med['xpnet']:.1f}" if naive else "-") + " |")


# ---------------------------------------------------------------------------
# Peak memory of one DeepConvNet training step, one framework per process
# ---------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(framework: str) -> dict:
    """Runs in a fresh process: the peak-RSS rise of one DeepConvNet training step."""
    import gc
    import tracemalloc

    # Warm up on a throw-away network (JIT code, thread pools, scratch buffers, lazy
    # library state), then measure the first step of a fresh one: nothing of an earlier
    # step is still held by its layers, so the rise is all the step needs.
    warm = contenders("DeepConvNet", naive=framework == "naive")[framework][0]
    warm()
    warm()
    del warm
    step = contenders("DeepConvNet", naive=framework == "naive")[framework][0]
    gc.collect()
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    traced = framework != "torch"
    if traced:
        tracemalloc.start()
    step()
    peak = _status_kib("VmHWM")
    result = {"framework": framework, "rss_before_mib": before / 1024,
              "step_peak_rise_mib": (peak - before) / 1024}
    if traced:
        result["tracemalloc_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return result


def run_memory(frameworks):
    results = []
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    for fw in frameworks:
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-child", fw], env=env, capture_output=True,
            text=True, check=False,
        )
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"memory measurement of {fw} failed")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print()
    print("| DeepConvNet train step, batch 100 | peak RSS rise (MiB) | tracemalloc peak (MiB) |")
    print("|---|---|---|")
    for r in results:
        tm = r.get("tracemalloc_peak_mib")
        print(f"| {r['framework']} | {r['step_peak_rise_mib']:.1f} | "
              + (f"{tm:.1f}" if tm is not None else "-") + " |")
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["DeepConvNet", "SimpleConvNet"],
                   choices=["DeepConvNet", "SimpleConvNet"])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=None,
                   help="threads for xpnet (Numba and BLAS) and PyTorch (default: all usable)")
    p.add_argument("--no-naive", action="store_true", help="skip the book's (slow) NumPy code")
    p.add_argument("--memory-only", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    import torch

    from xpnet.threads import set_num_threads

    n = set_num_threads(args.threads)
    torch.set_num_threads(n)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child)))
        return

    print(f"threads: xpnet {n} kernel workers (single-threaded BLAS inside), PyTorch "
          f"{torch.get_num_threads()}, the book's NumPy code {n} BLAS threads")
    print("env: " + ", ".join(f"{k}={os.environ.get(k)}" for k in
                              ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS")))
    if hasattr(os, "getloadavg"):
        print(f"load average before: {os.getloadavg()}")
    if not args.memory_only:
        rows = run_timing(args.models, args.rounds, naive=not args.no_naive, threads=n)
        print("BLAS after the run (threadpoolctl):")
        for line in blas_report():
            print("  " + line)
        print_table(rows)
    if not args.no_memory:
        run_memory(["xpnet", "torch"])
    if hasattr(os, "getloadavg"):
        print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
