"""CPU training step and inference, xpnet vs PyTorch (vs the book's NumPy code), side by side.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_cpu_training.py
    python benchmarks/bench_cpu_training.py --models DeepConvNet --rounds 30 --naive
    python benchmarks/bench_cpu_training.py --before ../xpnet-old    # two versions, one run
    python benchmarks/bench_cpu_training.py --half-params ch08_deep_convnet_params.pkl \
        --half-data mnist-dir                                        # float16 accuracy too
    python benchmarks/bench_cpu_training.py --profile DeepConvNet --batch 100
    python benchmarks/bench_cpu_training.py --memory-only

The table: DeepConvNet and SimpleConvNet training step at batch 8, 32, 100 and 256 and
inference at batch 1 and 100, float32 for xpnet and PyTorch (float64 for the book's code,
as ch. 7 writes it), and DeepConvNet's float16 inference against its float32 inference
(book 8.3.4). ``--threads n`` threads for each (xpnet's kernel workers, PyTorch's pool,
the BLAS under the book's code). A training step is forward + backward + Adam (lr 0.001);
inference is the forward pass in evaluation mode. The contenders are timed *interleaved*
-- each round times each of them once, in an order that rotates from round to round -- so
a burst of load on this shared machine hits them alike; the table gives medians over the
rounds and the ratios of the medians. ``--before ROOT`` adds the xpnet of another source
tree (``ROOT/xpnet``, ``ROOT/kernels``) as a contender, timed in a worker process of its
own between the others' calls, so an optimization is measured before and after in one run.

``--profile``: where one training step's time goes, per layer, forward and backward,
split into BLAS products (``np.matmul``/``np.dot``), Numba kernels and the rest (NumPy
expressions, allocation, Python). It runs on one thread, so the parts add up to the
layer's time. It takes the representative CNNs too (``--profile ResNet``); a residual or
Inception block is one row.

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
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import machine  # this folder is the script's first path entry
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _this_checkout(relative: str):
    """A module of this checkout loaded from its file: ``--xpnet-root``/``--before`` may
    put an older xpnet first on the path, one without it (it imports no xpnet)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(relative).stem, REPO / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _use_tree(root: Path) -> None:
    """Import xpnet (and its kernels) from ``root`` and the benchmark helpers from here."""
    for path in (str(HERE), str(root)):
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)


BATCH = 100
TRAIN_BATCHES = (8, 32, 100, 256)
INFER_BATCHES = (1, 100)
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


def batch(size=BATCH, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((size, 1, 28, 28), dtype=np.float32)  # pixel-like values in [0, 1)
    t = rng.integers(0, 10, size)
    return x, t


# A case is (model, phase, batch size, dtype); phase is "train step" or "inference".
def table_cases(models) -> list[tuple]:
    cases = []
    for model in models:
        cases += [(model, "train step", n, "float32") for n in TRAIN_BATCHES]
        cases += [(model, "inference", n, "float32") for n in INFER_BATCHES]
    if "DeepConvNet" in models:
        cases.append(("DeepConvNet", "inference", BATCH, "float16"))
    return cases


def case_label(case) -> str:
    model, phase, n, dtype = case
    return f"{model} {phase}, batch {n}" + (f", {dtype}" if dtype != "float32" else "")


def make_fn(framework: str, case, threads: int = 1):
    """A function running ``case`` once with ``framework`` (xpnet, torch or naive)."""
    model, phase, n, dtype = case
    x, t = batch(n)
    if framework == "xpnet":
        from xpnet import models, optimizers

        net = getattr(models, model)(dtype=np.dtype(dtype))
        if phase == "train step":
            opt = optimizers.Adam(lr=0.001)
            return lambda: opt.update(net.params, net.gradient(x, t))
        xd = x.astype(dtype)  # float16 stays float16 in memory, as book 8.3.4 does
        return lambda: net.predict(xd, train_flg=False)
    if framework == "torch":
        import torch
        import torch_nets

        tnet = {"SimpleConvNet": torch_nets.simple_convnet,
                "DeepConvNet": torch_nets.deep_convnet}[model]()
        xt, tt = torch.from_numpy(x), torch.from_numpy(t)
        if phase == "train step":
            step = torch_nets.train_step_fn(tnet)
            return lambda: step(xt, tt)
        return lambda: torch_nets.infer(tnet, xt)
    import naive_book
    from threadpoolctl import threadpool_limits

    np.random.seed(0)  # noqa: NPY002 - the book's code draws from the global generator
    bnet, bopt = getattr(naive_book, model)(), naive_book.Adam()
    x64 = x.astype(np.float64)
    fn = ((lambda: bopt.update(bnet.params, bnet.gradient(x64, t))) if phase == "train step"
          else (lambda: bnet.predict(x64)))

    def run():  # the book's code as its readers run it: BLAS on every thread
        with threadpool_limits(limits=threads, user_api="blas"):
            return fn()
    return run


def timed(fn):
    """fn as a function returning the seconds one call took."""
    def run():
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    return run


class TreeWorker:
    """xpnet of another source tree, in a process of its own, timing one call on request."""

    def __init__(self, root: Path, threads: int):
        env = dict(os.environ, PYTHONPATH=str(root))
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(root), "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def call(self, request) -> float:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise SystemExit("the --before worker died (see its error above)")
        return float(reply)

    def fn(self, case):
        self.call({"case": case})  # build it now, not inside the first timed call
        return lambda: self.call({"case": case, "run": True})

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def serve(threads):
    """The --before worker: one JSON request a line; replies with the seconds of one call."""
    fns = {}
    for line in sys.stdin:
        request = json.loads(line)
        case = tuple(request["case"])
        if case not in fns:
            fns[case] = timed(make_fn("xpnet", case, threads))
        print(fns[case]() if request.get("run") else 0.0, flush=True)


def timed_rounds(fns: dict, rounds: int, slow_every: dict) -> dict:
    """Interleaved timing: each round calls every function once (a slow one only every
    ``slow_every[name]`` rounds); each function returns the seconds its call took.
    Returns {name: [seconds, ...]}."""
    for fn in fns.values():  # warm-up: JIT compilation, buffers, allocator
        fn()
        fn()
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        # the order rotates, so no contender always runs right after the book's code
        # (whose large float64 temporaries evict the caches)
        for name in names[r % len(names):] + names[: r % len(names)]:
            if r % slow_every.get(name, 1):
                continue
            times[name].append(fns[name]())
    return times


def run_timing(cases, rounds, naive, threads, before=None):
    """{case: {contender: median ms}}; the float16 case is timed against float32 xpnet."""
    results = {}
    for case in cases:
        model, phase, n, dtype = case
        if dtype == "float16":
            ref = (model, phase, n, "float32")
            fns = {"xpnet": timed(make_fn("xpnet", case)),
                   "xpnet float32": timed(make_fn("xpnet", ref))}
            if before:
                fns["before"] = before.fn(case)
                fns["before float32"] = before.fn(ref)
        else:
            fns = {"xpnet": timed(make_fn("xpnet", case)),
                   "torch": timed(make_fn("torch", case))}
            if before:
                fns["before"] = before.fn(case)
            if naive and phase == "train step" and n == BATCH:
                fns["naive"] = timed(make_fn("naive", case, threads))
        slow = {"naive": max(1, rounds // 5)}  # the book's code: 5 rounds are enough
        times = timed_rounds(fns, rounds, slow)
        results[case] = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
        print(f"  {case_label(case):42s} " + "  ".join(
            f"{name} {ms:7.2f}" for name, ms in results[case].items()), flush=True)
    return results


def result_rows(results) -> list[dict]:
    """:func:`run_timing`'s results as the rows of ``xpnet.bench.side_by_side``."""
    return [{"case": case_label(case), "dtype": case[3], **med} for case, med in results.items()]


def half_accuracy(params_path, data_dir):
    """DeepConvNet's accuracy with the book's weights in float16 and float32."""
    from xpnet.datasets import load_idx_pair
    from xpnet.models import DeepConvNet

    data_dir = Path(data_dir)
    x, t = load_idx_pair(data_dir / "images-idx3-ubyte.gz", data_dir / "labels-idx1-ubyte.gz",
                         flatten=False)
    accs = {"digits": len(t)}
    for dtype in (np.float32, np.float16):
        net = DeepConvNet(dtype=dtype)
        net.load_params(params_path)
        accs[np.dtype(dtype).name] = net.accuracy(x, t)
    return accs


# ---------------------------------------------------------------------------
# Profile: per layer, forward and backward, BLAS vs Numba kernels vs the rest
# ---------------------------------------------------------------------------


class _Clock:
    """Wall time spent inside wrapped functions (one thread: no overlap)."""

    def __init__(self):
        self.spent = {"blas": 0.0, "kernels": 0.0}

    def wrap(self, fn, part):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[part] += time.perf_counter() - start
        return wrapper

    def snapshot(self):
        return dict(self.spent)


def _instrument(clock):
    """Route np.matmul / np.dot and every Numba kernel of the CPU kernels through clock."""
    import numba

    kernels_cpu = sys.modules.get("kernels.cpu") or sys.modules.get("xpnet.kernels.cpu")
    np.matmul = clock.wrap(np.matmul, "blas")
    np.dot = clock.wrap(np.dot, "blas")
    for name, obj in list(vars(kernels_cpu).items()):
        if isinstance(obj, numba.core.registry.CPUDispatcher):
            setattr(kernels_cpu, name, clock.wrap(obj, "kernels"))


def _gradients(net) -> dict:
    """The layers' gradients after a backward pass, as ``gradient`` collects them: through
    the layer registry, or in a tree from before it the ``_bindings`` table."""
    if hasattr(net, "registry"):
        return {key: getattr(s.layer, "d" + s.attr) for key, s in net.registry().params.items()}
    return {key: getattr(layer, "d" + attr) for key, (layer, attr) in net._bindings.items()}


def profile(model, n, rounds):
    """Per-layer forward/backward medians of a training step (ms), one thread."""
    from xpnet import models, optimizers
    from xpnet.layers import Dropout

    x, t = batch(n)
    net = getattr(models, model)(dtype=np.float32)
    opt = optimizers.Adam(lr=0.001)
    for _ in range(2):
        opt.update(net.params, net.gradient(x, t))
    clock = _Clock()
    _instrument(clock)
    layers = net._layer_list() + [net.last_layer]
    names = [f"{i:2d} {type(layer).__name__}" for i, layer in enumerate(layers)]
    samples = {}  # (name, direction) -> [(wall, blas, kernels)]

    def measure(key, fn):
        before, start = clock.snapshot(), time.perf_counter()
        out = fn()
        wall, after = time.perf_counter() - start, clock.snapshot()
        samples.setdefault(key, []).append(
            (wall, after["blas"] - before["blas"], after["kernels"] - before["kernels"]))
        return out

    for _ in range(rounds):
        h = net._input(x)
        for name, layer in zip(names[:-1], layers[:-1]):
            fwd = ((lambda lay=layer, a=h: lay.forward(a, True)) if isinstance(layer, Dropout)
                   else (lambda lay=layer, a=h: lay.forward(a)))
            h = measure((name, "forward"), fwd)
        measure((names[-1], "forward"), lambda a=h: net.last_layer.forward(a, t))
        d = 1
        for name, layer in zip(reversed(names), reversed(layers)):
            d = measure((name, "backward"), lambda lay=layer, g=d: lay.backward(g))
        grads = _gradients(net)
        measure(("Adam", "update"), lambda g=grads: opt.update(net.params, g))
    rows = []
    for (name, direction), ss in samples.items():
        med = [statistics.median(s[i] for s in ss) * 1e3 for i in range(3)]
        rows.append((name, direction, med[0], med[1], med[2], med[0] - med[1] - med[2]))
    return rows


def print_profile(rows, model, n):
    print(f"\nprofile: {model} training step, batch {n}, float32, 1 thread (medians, ms)")
    print("| layer | pass | total | BLAS | Numba kernels | rest (NumPy, allocation, Python) |")
    print("|---|---|---:|---:|---:|---:|")
    totals = [0.0] * 4
    for name, direction, *parts in sorted(rows, key=lambda r: (r[1] != "forward", r[0])):
        print(f"| {name} | {direction} | " + " | ".join(f"{v:.2f}" for v in parts) + " |")
        totals = [a + b for a, b in zip(totals, parts)]
    for direction in ("forward", "backward", "update"):
        part = [sum(r[2 + i] for r in rows if r[1] == direction) for i in range(4)]
        print(f"| all | {direction} | " + " | ".join(f"{v:.2f}" for v in part) + " |")
    print("| all | step | " + " | ".join(f"{v:.2f}" for v in totals) + " |")


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
    case = ("DeepConvNet", "train step", BATCH, "float32")
    warm = make_fn(framework, case)
    warm()
    warm()
    del warm
    step = make_fn(framework, case)
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


def run_memory(frameworks, root=REPO):
    results = []
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    for fw in frameworks:
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-child", fw, "--xpnet-root", str(root)], env=env,
            capture_output=True,
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


def machine_lines(n) -> list[str]:
    import torch

    lines = [f"CPU: {machine.cpu_model()}, {os.cpu_count()} logical CPUs; threads: xpnet {n} "
             f"kernel workers (single-threaded BLAS inside), PyTorch {torch.__version__} "
             f"{torch.get_num_threads()}",
             "env: " + ", ".join(f"{k}={os.environ.get(k)}" for k in
                                 ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS"))]
    if hasattr(os, "getloadavg"):
        lines.append("load average (1, 5, 15 min): "
                     + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["DeepConvNet", "SimpleConvNet"],
                   choices=["DeepConvNet", "SimpleConvNet"])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--only", metavar="TEXT", help="only the cases whose label contains TEXT "
                   "(e.g. 'batch 8' or 'inference')")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for xpnet (Numba and BLAS) and PyTorch (default: all usable)")
    p.add_argument("--naive", action="store_true",
                   help="also time the book's (slow) NumPy code, training step at batch 100")
    p.add_argument("--before", type=Path, metavar="ROOT",
                   help="also time the xpnet of the source tree ROOT, interleaved")
    p.add_argument("--half-params", type=Path, metavar="PKL",
                   help="the book's DeepConvNet weights: report float16 vs float32 accuracy")
    p.add_argument("--half-data", type=Path, metavar="DIR",
                   help="IDX test digits (images-idx3-ubyte.gz, labels-idx1-ubyte.gz)")
    p.add_argument("--profile", choices=["DeepConvNet", "SimpleConvNet", "LeNet", "VGGNet",
                                         "MiniGoogLeNet", "ResNet"],
                   help="per-layer profile of a training step instead of the table")
    p.add_argument("--batch", type=int, default=BATCH, help="batch size of --profile")
    p.add_argument("--xpnet-root", type=Path, default=REPO,
                   help="the source tree whose xpnet is measured (default: this one)")
    p.add_argument("--json", type=Path, metavar="FILE",
                   help="save the results for the report (python -m xpnet.bench ... "
                   "--side-by-side FILE)")
    p.add_argument("--memory-only", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    p.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    _use_tree((args.serve or args.xpnet_root).resolve())

    import torch

    from xpnet.threads import set_num_threads

    n = set_num_threads(1 if args.profile else args.threads)
    torch.set_num_threads(n)
    if args.serve:
        serve(n)
        return
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child)))
        return
    if args.profile:
        print("\n".join(machine_lines(n)))
        print_profile(profile(args.profile, args.batch, args.rounds), args.profile, args.batch)
        return

    table_lines = _this_checkout("xpnet/bench/side_by_side.py").table_lines
    lines = machine_lines(n)
    print("\n".join(lines))
    command = ["python", "benchmarks/bench_cpu_training.py",
               *(argv if argv is not None else sys.argv[1:])]
    saved = {"command": shlex.join(command), "machine": lines, "rows": []}
    if not args.memory_only:
        before = TreeWorker(args.before.resolve(), n) if args.before else None
        try:
            cases = [c for c in table_cases(args.models)
                     if not args.only or args.only in case_label(c) + ","]
            rows = result_rows(run_timing(cases, args.rounds, args.naive, n, before))
        finally:
            if before:
                before.close()
        saved["blas"] = blas_report()
        print("BLAS after the run (threadpoolctl):")
        for line in saved["blas"]:
            print("  " + line)
        print()
        print("\n".join(table_lines(rows, before is not None)))
        saved["rows"] = rows
        if args.half_params and args.half_data:
            saved["accuracy"] = accs = half_accuracy(args.half_params, args.half_data)
            print(f"\nDeepConvNet with the book's weights on {accs['digits']} test digits: "
                  f"float16 {accs['float16']:.2%}, float32 {accs['float32']:.2%}")
    if not args.no_memory:
        saved["memory"] = run_memory(["xpnet", "torch"], args.xpnet_root)
    if hasattr(os, "getloadavg"):
        lines.append("load average after: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
        print(f"\n{lines[-1]}")
    if args.json:
        tmp = args.json.with_name(args.json.name + ".tmp")  # written whole, then renamed
        tmp.write_text(json.dumps(saved, indent=1))
        os.replace(tmp, args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
