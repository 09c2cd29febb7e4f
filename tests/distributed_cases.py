"""The MPI side of ``tests/test_distributed.py``: one script, started by ``mpiexec -n 2``
(or as a plain single process) with a case name. Not collected by pytest (the name does
not start with ``test_``); each case writes what it saw to ``--out`` for the test to check.

    mpiexec -n 2 python tests/distributed_cases.py train --out DIR --steps 8 --batch 32

Cases:
    train      a minimal data-parallel loop (shard, gradient, allreduce_mean, update) on a
               float64 MultiLayerNet with weight decay; optional rank-0 checkpoints, a
               SIGKILL of one rank at a given step, and resume from the checkpoint.
    trainer    ``xpnet.trainer.Trainer`` with ``communicator=``: 2 epochs on 192 samples,
               optional checkpoints, a SIGKILL of one rank, resume.
    batchnorm  per-replica BatchNorm statistics, then ``sync_batchnorm``.
    mismatch   rank 1 builds a different model (or claims another xpnet version).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np

import xpnet
from xpnet.distributed import get_communicator
from xpnet.io import atomic_write
from xpnet.models import MultiLayerNet, MultiLayerNetExtend
from xpnet.optimizers import Momentum

N_SAMPLES, N_FEATURES, N_CLASSES = 256, 20, 4


def toy_data(seed=0):
    """Inputs x: (256, 20) float64 and labels t: (256,) from fixed random projections."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N_SAMPLES, N_FEATURES))
    t = np.argmax(x @ rng.standard_normal((N_FEATURES, N_CLASSES)), axis=1)
    return x, t


def build_net(rank: int, hidden=16):
    # A different initialization on every rank: broadcast_params must make them equal.
    xpnet.seed(1000 + rank)
    return MultiLayerNet(
        N_FEATURES, [hidden, hidden], N_CLASSES, weight_decay_lambda=0.01, dtype=np.float64
    )


def save_checkpoint(path: Path, net, opt, step, rng, losses):
    arrays = {f"params/{k}": v for k, v in net.params.items()}
    state = opt.state_dict()
    for slot, d in state["state"].items():
        for k, v in d.items():
            arrays[f"opt/{slot}/{k}"] = v
    meta = {
        "step": step, "rng": rng.bit_generator.state, "losses": losses,
        "opt": {k: state[k] for k in ("name", "hyperparams", "step")},
        "slots": sorted(state["state"]),
    }
    arrays["meta"] = np.array(json.dumps(meta))
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)


def load_checkpoint(path: Path, net, opt, rng):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    for k, p in net.params.items():
        p[...] = arrays[f"params/{k}"]
    state = {**meta["opt"], "state": {s: {} for s in meta["slots"]}}
    for k, v in arrays.items():
        if k.startswith("opt/"):
            _, slot, key = k.split("/", 2)
            state["state"][slot][key] = v
    opt.load_state_dict(state, net.params)
    rng.bit_generator.state = meta["rng"]
    return meta["step"], meta["losses"]


def case_train(args, comm):
    rank = comm.rank if comm else 0
    x, t = toy_data()
    net = build_net(rank)
    opt = Momentum(lr=0.1)
    rng = np.random.default_rng(123)  # the global batch order: the same on every rank
    step, losses = 0, []
    ckpt = Path(args.ckpt) / "ckpt.npz" if args.ckpt else None
    if args.resume and ckpt is not None and ckpt.exists():
        step, losses = load_checkpoint(ckpt, net, opt, rng)  # every rank reads it
    if comm:
        comm.check_consistency(net)
        comm.broadcast_params(net.params)
        if args.deadline:  # short, but only once both ranks are up (start-up can be slow)
            comm.timeout = args.deadline
    while step < args.steps:
        if comm and rank == args.kill_rank and step == args.kill_at:
            os.kill(os.getpid(), getattr(signal, "SIG" + args.signal))  # dies, or hangs
        idx = rng.integers(0, N_SAMPLES, size=args.batch)
        weight = 1.0
        if comm:
            weight = comm.shard_weight(args.batch)
            idx = comm.shard(idx)
        grads = net.gradient(x[idx], t[idx])
        loss = net.last_loss
        if comm:
            loss = comm.allreduce_mean(grads, loss=loss, weight=weight, step=step + 1)
        opt.update(net.params, grads)
        losses.append(float(loss))
        step += 1
        if ckpt is not None and step % args.ckpt_every == 0 and rank == 0:
            save_checkpoint(ckpt, net, opt, step, rng, losses)
    out = Path(args.out)
    np.savez(out / f"params_rank{rank}.npz", **net.params)
    (out / f"losses_rank{rank}.json").write_text(json.dumps(losses))


def case_batchnorm(args, comm):
    x, t = toy_data()
    xpnet.seed(0)
    net = MultiLayerNetExtend(
        N_FEATURES, [16, 16], N_CLASSES, use_batchnorm=True, dtype=np.float64
    )
    opt = Momentum(lr=0.1)
    comm.check_consistency(net)
    comm.broadcast_params(net.params)
    rng = np.random.default_rng(7)
    for _ in range(args.steps):
        idx = comm.shard(rng.integers(0, N_SAMPLES, size=args.batch))
        grads = net.gradient(x[idx], t[idx])
        comm.allreduce_mean(grads)
        opt.update(net.params, grads)
    before = {k: v.copy() for k, v in _stats(net).items()}
    count = comm.sync_batchnorm(net)
    out = Path(args.out)
    np.savez(out / f"bn_before_rank{comm.rank}.npz", **before)
    np.savez(out / f"bn_after_rank{comm.rank}.npz", **_stats(net))
    np.savez(out / f"params_rank{comm.rank}.npz", **net.params)
    (out / f"bn_count_rank{comm.rank}.json").write_text(json.dumps(count))


def _stats(net):
    return {
        f"{name}.{attr}": getattr(layer, attr)
        for name, layer in net.layers.items()
        for attr in ("running_mean", "running_var")
        if getattr(layer, attr, None) is not None
    }


def case_trainer(args, comm):
    """The Trainer with a communicator (None in one process): 2 epochs of 6 steps."""
    from xpnet.trainer import Trainer

    rank = comm.rank if comm else 0
    x, t = toy_data()
    net = _bn_net(rank) if args.batchnorm else build_net(rank)
    trainer = Trainer(
        net, x[:192], t[:192], x[192:], t[192:], epochs=args.epochs,
        mini_batch_size=args.batch, optimizer="Momentum", optimizer_param={"lr": 0.1},
        seed=5 if args.seed else None, checkpoint_dir=args.ckpt,
        checkpoint_every=args.ckpt_every if args.ckpt else None, resume=args.resume,
        communicator=comm,
    )
    if comm and args.deadline:
        comm.timeout = args.deadline
    if comm and rank == args.kill_rank:
        step = trainer.train_step

        def train_step():
            if trainer.current_iter == args.kill_at:
                os.kill(os.getpid(), getattr(signal, "SIG" + args.signal))
            step()

        trainer.train_step = train_step
    history = trainer.train()
    out = Path(args.out)
    np.savez(out / f"params_rank{rank}.npz", **net.state_arrays())
    (out / f"history_rank{rank}.json").write_text(json.dumps(history))


def _bn_net(rank):
    xpnet.seed(1000 + rank)
    return MultiLayerNetExtend(
        N_FEATURES, [16, 16], N_CLASSES, use_batchnorm=True, dtype=np.float64
    )


# What rank 1 is given differently from rank 0 in the Trainer's settings cases.
_RANK1_SETTINGS = {
    "lr": {"optimizer_param": {"lr": 0.2}},
    "optimizer": {"optimizer": "SGD"},
    "batch": {"mini_batch_size": 16},
    "epochs": {"epochs": 3},
    "seed": {"seed": 6},
    "train_size": {"n_train": 160},
}


def case_mismatch(args, comm):
    if args.what in _RANK1_SETTINGS:
        from xpnet.trainer import Trainer

        x, t = toy_data()
        kw = dict(epochs=2, mini_batch_size=32, optimizer="Momentum",
                  optimizer_param={"lr": 0.1}, seed=5, n_train=192)
        if comm.rank == 1:
            kw.update(_RANK1_SETTINGS[args.what])
        n = kw.pop("n_train")
        Trainer(build_net(comm.rank), x[:n], t[:n], x[192:], t[192:], verbose=False,
                communicator=comm, **kw)  # raises on every rank
        print("consistency check passed", flush=True)
        return
    if comm.rank == 1 and args.what == "version":
        xpnet.__version__ = "0.0.0-other"
    hidden = 12 if comm.rank == 1 and args.what == "shape" else 16
    net = build_net(comm.rank, hidden=hidden)
    comm.check_consistency(net)  # raises on every rank
    print("consistency check passed", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("case", choices=["train", "trainer", "batchnorm", "mismatch"])
    parser.add_argument("--out", default=".")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--ckpt-every", type=int, default=4)
    parser.add_argument("--kill-rank", type=int, default=-1)
    parser.add_argument("--kill-at", type=int, default=-1)
    parser.add_argument("--signal", default="KILL", choices=["KILL", "STOP"])
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--deadline", type=float, default=None,
                        help="the communicator's timeout (s) once training starts")
    parser.add_argument("--what", default="shape")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1, help="0: let the Trainer draw one")
    parser.add_argument("--batchnorm", action="store_true")
    args = parser.parse_args(argv)
    comm = get_communicator()
    cases = {"train": case_train, "trainer": case_trainer, "batchnorm": case_batchnorm,
             "mismatch": case_mismatch}
    cases[args.case](args, comm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
