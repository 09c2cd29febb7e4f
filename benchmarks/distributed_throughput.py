"""Data-parallel training on one machine: DeepConvNet throughput with 1 and 2 processes,
the measured MPI allreduce bandwidth, and what the allreduce costs per step per network.

    python benchmarks/distributed_throughput.py [--batch 64] [--steps 8] [--repeat 3]
                                                [--json out.json]

It starts its own MPI jobs (``mpiexec -n 2 python <this file> --worker ...``) and prints
markdown tables:

1. DeepConvNet training steps (forward, backward, allreduce of the gradients, Adam),
   float32, global batch ``--batch``: one process with 1 and with all threads, and 2
   processes of 1 thread each with half the batch each. Images per second and, for the
   2-process run, the time per step spent in ``allreduce_mean`` (which includes waiting
   for the slower rank).
2. Allreduce bandwidth of ``MPICommunicator`` (non-blocking Iallreduce polled with a
   deadline, as training uses it) beside a plain blocking ``MPI.Allreduce``, float32
   buffers from 4 KiB to 64 MiB: algorithm bandwidth = bytes / time, and bus bandwidth =
   algorithm bandwidth * 2 (n - 1) / n, the rate each link of a ring carries.
3. Per network of the book: parameters, bytes reduced per step (float32), and the time
   one allreduce of that size took here.

The machine and thread settings are printed above the tables; the numbers of one run are
comparable with each other, not across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

SIZES = [2**k for k in range(12, 27, 2)]  # bytes: 4 KiB ... 64 MiB
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ---------------------------------------------------------------------------
# Workers (run inside the MPI jobs or as one plain process)
# ---------------------------------------------------------------------------


def worker_throughput(batch: int, steps: int, threads: int) -> dict:
    import xpnet
    from xpnet.distributed import get_communicator
    from xpnet.models import DeepConvNet
    from xpnet.optimizers import Adam
    from xpnet.threads import set_num_threads

    set_num_threads(threads)
    comm = get_communicator(verbose=False)
    xpnet.seed(0)
    net = DeepConvNet(dtype=np.float32)
    opt = Adam(lr=0.001)
    rng = np.random.default_rng(0)
    x = rng.random((1024, 1, 28, 28), dtype=np.float32)
    t = rng.integers(0, 10, size=1024)
    if comm is not None:
        comm.check_consistency(net)
        comm.broadcast_params(net.params)
    comm_time = 0.0
    timings = []
    for step in range(steps + 2):  # the first two warm up (Numba, BLAS, allocations)
        start = time.perf_counter()
        idx = rng.integers(0, len(x), size=batch)
        if comm is not None:
            idx = comm.shard(idx)
        grads = net.gradient(x[idx], t[idx])
        if comm is not None:
            c0 = time.perf_counter()
            comm.allreduce_mean(grads, loss=net.last_loss, step=step + 1)
            if step >= 2:
                comm_time += time.perf_counter() - c0
        opt.update(net.params, grads)
        if step >= 2:
            timings.append(time.perf_counter() - start)
    if comm is not None:
        comm.barrier()
    per_step = float(np.median(timings))
    return {
        "processes": 1 if comm is None else comm.size,
        "threads": threads,
        "batch": batch,
        "step_s": per_step,
        "images_per_s": batch / per_step,
        "allreduce_s": comm_time / steps if comm is not None else 0.0,
        "rank": 0 if comm is None else comm.rank,
    }


def worker_allreduce() -> dict:
    from mpi4py import MPI

    from xpnet.distributed import MPICommunicator

    comm = MPICommunicator(MPI.COMM_WORLD)
    rows = []
    for nbytes in SIZES:
        buf = np.ones(nbytes // 4, dtype=np.float32)
        reps = int(max(5, min(200, 2e8 // nbytes)))
        result = {"bytes": nbytes}
        for name in ("xpnet", "blocking"):
            comm.barrier()
            start = time.perf_counter()
            for _ in range(reps):
                if name == "xpnet":
                    comm._allreduce_sum_(buf, "the bandwidth benchmark")
                else:
                    MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, buf)
            elapsed = (time.perf_counter() - start) / reps
            # the slowest rank's time is the collective's time
            result[f"{name}_s"] = float(MPI.COMM_WORLD.allreduce(elapsed, op=MPI.MAX))
        rows.append(result)
    return {"size": comm.size, "rows": rows}


# ---------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------


def _run_worker(args: list[str], n: int, env_extra: dict) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(REPO), **env_extra)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *args]
    if n > 1:
        mpiexec = shutil.which("mpiexec")
        if mpiexec is None:
            raise SystemExit("mpiexec not found: in the xpnet checkout, "
                             "pip install -e '.[distributed]'")
        cmd = [mpiexec, "-n", str(n), *cmd]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]


def _param_counts() -> list[tuple[str, int]]:
    from xpnet.models import DeepConvNet, MultiLayerNet, SimpleConvNet, TwoLayerNet

    nets = [
        ("TwoLayerNet(784, 50, 10)", TwoLayerNet(784, 50, 10)),
        ("MultiLayerNet(784, [100]*5, 10)", MultiLayerNet(784, [100] * 5, 10)),
        ("SimpleConvNet()", SimpleConvNet()),
        ("DeepConvNet()", DeepConvNet()),
    ]
    return [(name, int(sum(p.size for p in net.params.values()))) for name, net in nets]


def _interp(rows, nbytes, key):
    sizes = np.array([r["bytes"] for r in rows], dtype=float)
    times = np.array([r[key] for r in rows])
    return float(np.exp(np.interp(np.log(nbytes), np.log(sizes), np.log(times))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="global mini-batch (default 64)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run (default 8)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each setting, the best kept (default 3)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        kind = args.worker[0]
        if kind == "throughput":
            out = worker_throughput(*map(int, args.worker[1:]))
        else:
            out = worker_allreduce()
        if out.get("rank", 0) == 0 and (kind != "allreduce" or _is_root()):
            print("RESULT " + json.dumps(out), flush=True)
        return 0

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    from threadpoolctl import threadpool_info

    blas = ", ".join(
        f"{i.get('internal_api')} {i.get('version')}" for i in threadpool_info()
        if i.get("user_api") == "blas"
    )
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores, "
          f"load average {os.getloadavg()[0]:.2f}; numpy {np.__version__}, BLAS {blas}")

    configs = [(1, 1), (1, cores), (2, 1)] if cores > 1 else [(1, 1), (2, 1)]
    best: dict = {}
    for _ in range(args.repeat):  # interleaved, so a burst of load hits every setting alike
        for n, threads in configs:
            env = ONE_THREAD if threads == 1 else {}
            (res,) = _run_worker(
                ["throughput", str(args.batch), str(args.steps), str(threads)], n, env
            )
            if (n, threads) not in best or res["step_s"] < best[(n, threads)]["step_s"]:
                best[(n, threads)] = res
    runs = [best[c] for c in configs]
    base = runs[0]["images_per_s"]
    print(f"\nDeepConvNet training step, float32, global batch {args.batch}, "
          f"median of {args.steps} steps, best of {args.repeat} runs")
    print("| processes | threads each | batch each | s / step | images / s | vs 1x1 "
          "| allreduce s / step |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['processes']} | {r['threads']} | {r['batch'] // r['processes']} "
              f"| {r['step_s']:.3f} | {r['images_per_s']:.1f} | {r['images_per_s'] / base:.2f}x "
              f"| {r['allreduce_s'] * 1e3:.2f} ms |")

    (bw,) = _run_worker(["allreduce"], 2, ONE_THREAD)
    n = bw["size"]
    print(f"\nMPI allreduce, {n} processes, float32 (time of the slowest rank)")
    print("| bytes | xpnet (Iallreduce + deadline) | algbw | busbw | blocking Allreduce | algbw |")
    print("|---|---|---|---|---|---|")
    for r in bw["rows"]:
        alg = r["bytes"] / r["xpnet_s"] / 1e9
        alg_b = r["bytes"] / r["blocking_s"] / 1e9
        print(f"| {r['bytes']:,} | {r['xpnet_s'] * 1e6:.1f} us | {alg:.2f} GB/s "
              f"| {alg * 2 * (n - 1) / n:.2f} GB/s | {r['blocking_s'] * 1e6:.1f} us "
              f"| {alg_b:.2f} GB/s |")

    print("\nAllreduce per training step (one fused float32 buffer: parameters + the loss)")
    print("| network | parameters | bytes per step | allreduce here (2 processes) |")
    print("|---|---|---|---|")
    counts = _param_counts()
    for name, count in counts:
        nbytes = 4 * (count + 1)
        print(f"| {name} | {count:,} | {nbytes / 1e6:.2f} MB "
              f"| {_interp(bw['rows'], nbytes, 'xpnet_s') * 1e3:.2f} ms |")

    if args.json:
        Path(args.json).write_text(json.dumps(
            {"throughput": runs, "allreduce": bw, "params": counts}, indent=1))
    return 0


def _is_root() -> bool:
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_rank() == 0


if __name__ == "__main__":
    sys.exit(main())
