"""Checkpoints and resume: an interrupted run, resumed, ends exactly where the
uninterrupted run ends; bad checkpoints are one clear error and are left untouched."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from trainer_nets import TinyNet, toy_data

import xpnet
from xpnet.io import save_params
from xpnet.trainer import CHECKPOINT_NAME, CheckpointError, Trainer

HERE = Path(__file__).resolve().parent


class Interrupt(Exception):
    pass


def stops_at(net, stop):
    """Make ``net`` raise from inside step ``stop`` (counted from 1), like a crash mid-epoch."""
    gradient = net.gradient
    calls = []

    def interrupted(x, t):
        calls.append(1)
        if len(calls) == stop:
            raise Interrupt
        return gradient(x, t)

    net.gradient = interrupted
    return net


@pytest.fixture
def data():
    x, t = toy_data()
    return x[:200], t[:200], x[200:], t[200:]


OPTS = dict(epochs=4, mini_batch_size=16, optimizer="Adam", optimizer_param={"lr": 0.01}, seed=11)


def run(data, net, **kw):
    tr = Trainer(net, *data, verbose=False, **{**OPTS, **kw})
    tr.train()
    return tr


def fresh_net(init=0, **kw):
    """A network with the initial weights of seed ``init``: the runs compared start from
    init 0; the network a run is resumed into starts elsewhere (the checkpoint restores it)."""
    xpnet.seed(init)
    return TinyNet(dropout=0.25, **kw)


def assert_same_run(a, b):
    for key in a.network.params:
        np.testing.assert_array_equal(xpnet.backend.as_numpy(a.network.params[key]),
                                      xpnet.backend.as_numpy(b.network.params[key]))
    assert a.train_loss_list == b.train_loss_list
    assert a.train_acc_list == b.train_acc_list and a.test_acc_list == b.test_acc_list
    assert a.current_iter == b.current_iter == a.max_iter


@pytest.mark.parametrize(
    "every, stop",
    [(None, 31), (5, 24), (1, 2)],  # per epoch (13 steps), mid-epoch, the very first step
)
def test_interrupted_and_resumed_equals_uninterrupted(data, tmp_path, every, stop):
    full = run(data, fresh_net(), checkpoint_every=every)

    ck = tmp_path / "ck"
    with pytest.raises(Interrupt):
        run(data, stops_at(fresh_net(), stop), checkpoint_dir=ck, checkpoint_every=every)
    assert (ck / CHECKPOINT_NAME).exists()

    resumed = Trainer(fresh_net(1), *data, verbose=False, checkpoint_dir=ck, resume=True,
                      checkpoint_every=every, **OPTS)
    assert 0 < resumed.current_iter < stop
    resumed.train()
    assert_same_run(full, resumed)


def test_checkpointing_does_not_change_the_run(data, tmp_path):
    plain = run(data, fresh_net())
    checkpointed = run(data, fresh_net(), checkpoint_dir=tmp_path)
    assert_same_run(plain, checkpointed)


def test_resume_with_more_epochs_extends_the_run(data, tmp_path):
    full = run(data, fresh_net(), epochs=4)
    run(data, fresh_net(), epochs=2, checkpoint_dir=tmp_path)
    more = Trainer(fresh_net(1), *data, verbose=False, checkpoint_dir=tmp_path, resume=True,
                   **{**OPTS, "epochs": 4})
    assert more.current_epoch == 2 and len(more.test_acc_list) == 2
    more.train()
    assert_same_run(full, more)


def test_resume_without_a_checkpoint_starts_fresh(data, tmp_path, capsys):
    tr = Trainer(fresh_net(), *data, checkpoint_dir=tmp_path / "new", resume=True, **OPTS)
    assert tr.current_iter == 0
    assert "no checkpoint" in capsys.readouterr().out


def test_checkpoint_holds_host_arrays_and_no_pickle(data, tmp_path):
    run(data, fresh_net(), epochs=1, checkpoint_dir=tmp_path)
    with np.load(tmp_path / CHECKPOINT_NAME, allow_pickle=False) as z:
        files = set(z.files)
        meta = json.loads(str(z["meta"]))
    assert {"params/W1", "params/b1", "optimizer/m/W1", "optimizer/v/b1"} <= files
    assert meta["model"] == "TinyNet" and meta["optimizer"]["name"] == "Adam"
    assert meta["trainer"]["current_iter"] == 13 and meta["optimizer"]["step"] == 13
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary behind


# ---------------------------------------------------------------------------
# Killed for real: SIGKILL in the middle of an epoch
# ---------------------------------------------------------------------------


def test_sigkill_mid_epoch_then_resume(data, tmp_path):
    ck = tmp_path / "ck"
    # the child's schedule: 200 samples, batch 10 -> 20 steps per epoch, checkpoint every 7
    opts = dict(epochs=3, mini_batch_size=10, optimizer="adam", seed=5, checkpoint_every=7)
    child = subprocess.Popen(
        [sys.executable, str(HERE / "trainer_nets.py"),
         json.dumps({**opts, "checkpoint_dir": str(ck)})],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])},
    )
    try:
        deadline = time.monotonic() + 60
        while not (ck / CHECKPOINT_NAME).exists():
            assert child.poll() is None, "the child ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL

    x, t = toy_data()
    xpnet.seed(999)
    resumed = Trainer(TinyNet(dropout=0.2), x[:200], t[:200], x[200:], t[200:], verbose=False,
                      checkpoint_dir=ck, resume=True, **opts)
    killed_at = resumed.current_iter
    assert 0 < killed_at < 60 and killed_at % 7 == 0
    resumed.train()

    xpnet.seed(123)  # the child's initial weights
    full = Trainer(TinyNet(dropout=0.2), x[:200], t[:200], x[200:], t[200:], verbose=False,
                   **opts)
    full.train()
    assert_same_run(full, resumed)


# ---------------------------------------------------------------------------
# Bad checkpoints: one clear error, nothing overwritten
# ---------------------------------------------------------------------------


@pytest.fixture
def checkpoint(data, tmp_path):
    run(data, fresh_net(), epochs=1, checkpoint_dir=tmp_path)
    return tmp_path / CHECKPOINT_NAME


def assert_refused(data, ck_dir, net, match, **kw):
    path = ck_dir / CHECKPOINT_NAME
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    params = {k: v.copy() for k, v in net.params.items()}
    with pytest.raises(CheckpointError, match=match):
        Trainer(net, *data, verbose=False, checkpoint_dir=ck_dir, resume=True, **{**OPTS, **kw})
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    for k, v in params.items():  # the network was not touched either
        np.testing.assert_array_equal(net.params[k], v)


def test_truncated_checkpoint(data, checkpoint):
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    assert_refused(data, checkpoint.parent, fresh_net(), "truncated or corrupt")


def test_garbage_checkpoint(data, checkpoint):
    checkpoint.write_bytes(b"not a zip file at all")
    assert_refused(data, checkpoint.parent, fresh_net(), "truncated or corrupt")


def test_checkpoint_of_another_model(data, checkpoint):
    x, t, xt, tt = data
    other = TinyNet(d=8, classes=5)
    assert_refused(data, checkpoint.parent, other,
                   r"params/W1 is float64 of shape \(8, 3\), this run needs float64 of "
                   r"shape \(8, 5\)")


def test_checkpoint_of_another_class(data, checkpoint):
    class OtherNet(TinyNet):
        pass

    assert_refused(data, checkpoint.parent, OtherNet(), "written for a TinyNet, this network "
                   "is a OtherNet")


def test_checkpoint_of_another_optimizer(data, checkpoint):
    assert_refused(data, checkpoint.parent, fresh_net(), "other settings than its run's "
                   r"\(optimizer Adam -> Momentum; checkpoint -> now\)", optimizer="momentum")


def test_checkpoint_of_another_batch_size(data, checkpoint):
    assert_refused(data, checkpoint.parent, fresh_net(), "mini_batch_size was 16, now 32",
                   mini_batch_size=32)


def test_parameter_file_is_not_a_checkpoint(data, tmp_path):
    save_params(fresh_net().params, tmp_path / CHECKPOINT_NAME)
    assert_refused(data, tmp_path, fresh_net(), "not an xpnet training checkpoint")


def test_existing_checkpoint_is_not_overwritten_without_resume(data, checkpoint):
    before = checkpoint.read_bytes()
    with pytest.raises(CheckpointError, match="already exists; pass resume=True"):
        Trainer(fresh_net(), *data, verbose=False, checkpoint_dir=checkpoint.parent, **OPTS)
    assert checkpoint.read_bytes() == before


def test_diverged_run_writes_no_checkpoint(data, tmp_path):
    class Diverges(TinyNet):
        def gradient(self, x, t):
            grads = super().gradient(x, t)
            if self.calls["gradient"] >= 20:
                self.last_loss = np.asarray(np.nan)
            return grads

    with pytest.raises(FloatingPointError, match="step 20"):
        run(data, Diverges(), checkpoint_dir=tmp_path)
    with np.load(tmp_path / CHECKPOINT_NAME) as z:  # the epoch-1 checkpoint, not a later one
        assert json.loads(str(z["meta"]))["trainer"]["current_iter"] == 13


# ---------------------------------------------------------------------------
# The book's networks: BatchNormalization statistics and Dropout masks resume too
# ---------------------------------------------------------------------------


def test_multilayernetextend_resumes_exactly(data, tmp_path):
    from xpnet.models import MultiLayerNetExtend

    def net(init):
        xpnet.seed(init)
        return MultiLayerNetExtend(8, [12, 12], 3, use_dropout=True, dropout_ration=0.2,
                                   use_batchnorm=True, weight_decay_lambda=1e-3)

    opts = dict(epochs=3, mini_batch_size=16, optimizer="momentum", seed=2, verbose=False)
    full = Trainer(net(0), *data, **opts)
    full.train()
    interrupted = stops_at(net(0), 20)
    with pytest.raises(Interrupt):
        Trainer(interrupted, *data, checkpoint_dir=tmp_path, **opts).train()
    resumed = Trainer(net(1), *data, checkpoint_dir=tmp_path, resume=True, **opts)
    assert resumed.current_iter == 13
    resumed.train()
    assert_same_run(full, resumed)
    for name in ("BatchNorm1", "BatchNorm2"):
        for attr in ("running_mean", "running_var"):
            np.testing.assert_array_equal(getattr(full.network.layers[name], attr),
                                          getattr(resumed.network.layers[name], attr))


@pytest.mark.gpu
@pytest.mark.skipif(not xpnet.gpu_available(), reason="needs a CUDA GPU with CuPy")
def test_gpu_run_resumes_exactly_and_its_checkpoint_loads_on_the_cpu(data, tmp_path):
    from xpnet.models import MultiLayerNetExtend

    def net(init):
        xpnet.seed(init)
        return MultiLayerNetExtend(8, [12, 12], 3, use_dropout=True, dropout_ration=0.2,
                                   use_batchnorm=True)

    # 13 steps an epoch and 65 in all: the losses are read back in groups (every 50 steps
    # and at each epoch's end), and a NaN check covers each group
    opts = dict(epochs=5, mini_batch_size=16, optimizer="adam", seed=2, verbose=False,
                device="gpu")
    full = Trainer(net(0), *data, **opts)
    full.train()
    with pytest.raises(Interrupt):
        Trainer(stops_at(net(0), 30), *data, checkpoint_dir=tmp_path, **opts).train()
    resumed = Trainer(net(1), *data, checkpoint_dir=tmp_path, resume=True, **opts)
    assert resumed.current_iter == 26
    resumed.train()
    assert_same_run(full, resumed)
    # the checkpoint holds host arrays: a CPU run picks it up
    on_cpu = Trainer(net(1), *data, checkpoint_dir=tmp_path, resume=True,
                     **{**opts, "device": "cpu"})
    assert on_cpu.current_iter == 65 and on_cpu.network.device == "cpu"
    np.testing.assert_array_equal(on_cpu.network.params["W1"],
                                  xpnet.as_numpy(full.network.params["W1"]))


# ---------------------------------------------------------------------------
# A failed load changes nothing: every array exact, every field checked first
# ---------------------------------------------------------------------------


def rewrite_checkpoint(path, **changes):
    """Rewrite the checkpoint at ``path`` with some arrays replaced (None: removed) or,
    with ``meta=f``, its meta passed through ``f``."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    edit_meta = changes.pop("meta", None)
    if edit_meta is not None:
        edit_meta(meta)
    arrays["meta"] = np.array(json.dumps(meta))
    for key, value in changes.items():
        key = key.replace("__", "/")
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def two_layer_net():
    from xpnet.models import MultiLayerNetExtend

    xpnet.seed(0)
    return MultiLayerNetExtend(8, [6, 5], 3, use_batchnorm=True, dtype="float64")


def trained(data, tmp_path, net=None):
    tr = run(data, net or fresh_net(), epochs=1, checkpoint_dir=tmp_path)
    return tr, tmp_path / CHECKPOINT_NAME


def snapshot(tr):
    from xpnet.models import named_buffers  # any book-style network's, TinyNet's too

    return ({k: v.copy() for k, v in tr.network.params.items()},
            {k: v.copy() for k, v in named_buffers(tr.network).items()},
            tr.optimizer.state_dict(), tr.current_iter, list(tr.train_loss_list), tr.seed)


def assert_unchanged(before, after):
    params, buffers, opt, step, losses, seed = before
    params2, buffers2, opt2, step2, losses2, seed2 = after
    for k in params:
        np.testing.assert_array_equal(params[k], params2[k])
    assert buffers.keys() == buffers2.keys()
    for k in buffers:
        np.testing.assert_array_equal(buffers[k], buffers2[k])
    assert opt["hyperparams"] == opt2["hyperparams"] and opt["step"] == opt2["step"]
    for slot, d in opt["state"].items():
        for k, v in d.items():
            np.testing.assert_array_equal(v, opt2["state"][slot][k])
    assert (step, losses, seed) == (step2, losses2, seed2)


def set_trainer(key, value):
    return lambda meta: meta["trainer"].__setitem__(key, value)


@pytest.mark.parametrize("change, match", [
    # the last array wrong: nothing before it may have been written
    ({"params__b1": np.zeros(4)}, r"params/b1 is float64 of shape \(4,\), this run needs "
     r"float64 of shape \(3,\)"),
    ({"params__W1": np.float64(0.5)}, r"params/W1 is float64 of shape \(\)"),  # a scalar
    ({"params__W1": np.ones((1, 3))}, r"params/W1 is float64 of shape \(1, 3\)"),  # one row
    ({"params__W1": np.ones((8, 3), np.float32)}, "params/W1 is float32"),
    ({"params__b1": None}, "missing 'params/b1'"),
    ({"optimizer__m__W1": np.ones((1, 3))}, r"optimizer/m/W1 is float64 of shape \(1, 3\)"),
    ({"optimizer__v__b1": None}, "optimizer/v/b1 is missing"),
    ({"history__train_loss_list": np.zeros(3)}, "history/train_loss_list must hold 13"),
    ({"meta": set_trainer("current_iter", -1)}, "trainer.current_iter must be a non-negative"),
    ({"meta": set_trainer("current_iter", 2.5)}, "trainer.current_iter must be a non-negative"),
    ({"meta": set_trainer("seed", "7")}, "trainer.seed must be a non-negative integer"),
    ({"meta": set_trainer("current_epoch", 3)}, "it says epoch 3 at step 13"),
    ({"meta": lambda m: m["optimizer"].__setitem__("step", -5)}, "optimizer.step must be"),
    ({"meta": lambda m: m["optimizer"]["hyperparams"].__setitem__("beta1", float("nan"))},
     "hyperparameter beta1 must be a finite number"),
])
def test_a_failed_load_leaves_network_optimizer_and_trainer_untouched(data, tmp_path, change,
                                                                      match):
    tr, path = trained(data, tmp_path)
    before = snapshot(tr)
    rewrite_checkpoint(path, **change)
    with pytest.raises(CheckpointError, match=match):
        tr.load_checkpoint(path)
    assert_unchanged(before, snapshot(tr))


@pytest.mark.parametrize("change, match", [
    ({"buffers__BatchNorm1.running_mean": None}, "buffers/BatchNorm1.running_mean is missing"),
    ({"buffers__BatchNorm2.running_var": np.ones(1)},
     r"buffers/BatchNorm2.running_var is float64 of shape \(1,\)"),
    ({"buffers__BatchNorm2.running_var": np.ones(5, np.float32)},
     "buffers/BatchNorm2.running_var is float32"),
])
def test_batchnorm_statistics_are_required_and_exact(data, tmp_path, change, match):
    tr, path = trained(data, tmp_path, two_layer_net())
    before = snapshot(tr)
    assert {"BatchNorm1.running_mean", "BatchNorm2.running_var"} <= set(before[1])
    rewrite_checkpoint(path, **change)
    with pytest.raises(CheckpointError, match=match):
        tr.load_checkpoint(path)
    assert_unchanged(before, snapshot(tr))


# ---------------------------------------------------------------------------
# Resume refuses changed settings, naming old and new values
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("change, match", [
    ({"optimizer_param": {"lr": 0.02}}, r"lr 0.01 -> 0.02"),
    ({"seed": 12}, r"seed 11 -> 12"),
    ({"optimizer_param": {"lr": 0.01, "beta1": 0.5}}, r"beta1 0.9 -> 0.5"),
    ({"optimizer": "sgd"}, r"optimizer Adam -> SGD"),
])
def test_resume_with_changed_settings_is_refused(data, checkpoint, change, match):
    assert_refused(data, checkpoint.parent, fresh_net(1),
                   "cannot resume from .* with other settings than its run's .*" + match,
                   **change)


def test_resume_without_a_seed_takes_the_checkpoints(data, checkpoint):
    tr = Trainer(fresh_net(1), *data, verbose=False, checkpoint_dir=checkpoint.parent,
                 resume=True, **{**OPTS, "seed": None})
    assert tr.seed == OPTS["seed"] and tr.history["seed"] == OPTS["seed"]


# ---------------------------------------------------------------------------
# The random stream: a function of (seed, step), owned by the trainer
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("every", [10, 3])
def test_checkpoint_every_does_not_change_the_run(data, tmp_path, every):
    plain = run(data, fresh_net())
    checkpointed = run(data, fresh_net(), checkpoint_dir=tmp_path, checkpoint_every=every)
    assert_same_run(plain, checkpointed)


def test_resume_may_change_checkpoint_every(data, tmp_path):
    full = run(data, fresh_net())
    with pytest.raises(Interrupt):
        run(data, stops_at(fresh_net(), 24), checkpoint_dir=tmp_path, checkpoint_every=5)
    resumed = Trainer(fresh_net(1), *data, verbose=False, checkpoint_dir=tmp_path, resume=True,
                      checkpoint_every=7, **OPTS)
    assert resumed.current_iter == 20
    resumed.train()
    assert_same_run(full, resumed)


def test_two_trainers_in_two_threads_equal_the_two_run_one_after_the_other(data):
    import threading

    def make(seed):
        xpnet.seed(seed)
        net = TinyNet(dropout=0.3)
        return Trainer(net, *data, verbose=False, **{**OPTS, "seed": seed, "epochs": 30})

    alone = [make(s) for s in (1, 2)]
    for tr in alone:
        tr.train()
    together = [make(s) for s in (1, 2)]
    errors = []

    def train(tr):
        try:
            tr.train()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=train, args=(tr,)) for tr in together]
    for th in threads:
        th.start()
    xpnet.seed(5)  # the process-global state moves meanwhile: the trainers must not care
    for _ in range(200):
        xpnet.backend.get_rng(np).random(10)
    for th in threads:
        th.join()
    assert not errors
    for a, b in zip(alone, together):
        assert_same_run(a, b)


def test_batch_draw_is_one_overridable_method(data):
    class FirstSamples(Trainer):
        def _draw_batch_indices(self, step):
            return np.arange(self.batch_size)

    seen = []
    xpnet.seed(0)
    net = TinyNet()
    gradient = net.gradient

    def spy(x, t):
        seen.append(x.copy())
        return gradient(x, t)

    net.gradient = spy
    FirstSamples(net, *data, verbose=False, **{**OPTS, "epochs": 1}).train()
    assert len(seen) == 13
    for x_batch in seen:
        np.testing.assert_array_equal(x_batch, data[0][:16])


# ---------------------------------------------------------------------------
# Leftovers and races: stale temporary files, one live run per directory
# ---------------------------------------------------------------------------


def test_stale_temporary_files_are_removed_on_the_next_start(data, checkpoint):
    stale = [checkpoint.parent / f".{CHECKPOINT_NAME}.{i:012x}.tmp" for i in range(3)]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    other = checkpoint.parent / ".unrelated.tmp"
    other.write_bytes(b"not ours")
    tr = Trainer(fresh_net(1), *data, verbose=False, checkpoint_dir=checkpoint.parent,
                 resume=True, **OPTS)
    assert not any(p.exists() for p in stale) and other.exists()
    tr.train()


HOLD_LOCK = """
import sys, time
from trainer_nets import TinyNet, toy_data
from xpnet.trainer import Trainer
x, t = toy_data()
tr = Trainer(TinyNet(), x, t, x, t, epochs=1, mini_batch_size=10, verbose=False,
             checkpoint_dir=sys.argv[1])
print("locked", flush=True)
if sys.argv[2] == "hold":
    time.sleep(60)
else:
    import os
    os._exit(0)  # dies holding it, like a kill -9
"""


def _lock_holder(ck, mode):
    return subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(ck), mode], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])},
    )


def test_a_second_live_run_on_one_directory_is_refused_naming_the_holder(data, tmp_path):
    import socket

    holder = _lock_holder(tmp_path, "hold")
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CheckpointError, match=rf"in use by process {holder.pid} on "
                           rf"{socket.gethostname()} \(lock file"):
            Trainer(fresh_net(), *data, verbose=False, checkpoint_dir=tmp_path, **OPTS)
    finally:
        holder.kill()
        holder.wait()
    # its lock died with it: the directory is free again
    run(data, fresh_net(), checkpoint_dir=tmp_path)


def test_a_lock_left_by_a_dead_process_is_taken_over(data, tmp_path, capsys):
    holder = _lock_holder(tmp_path, "die")
    assert holder.stdout.readline().strip() == "locked"
    holder.wait()
    tr = Trainer(fresh_net(), *data, checkpoint_dir=tmp_path, **OPTS)
    assert f"left by process {holder.pid}" in capsys.readouterr().out
    tr.train()


def test_two_trainers_of_one_process_share_no_directory(data, tmp_path):
    first = Trainer(fresh_net(), *data, verbose=False, checkpoint_dir=tmp_path, **OPTS)
    with pytest.raises(CheckpointError, match=f"in use by process {os.getpid()}"):
        Trainer(fresh_net(), *data, verbose=False, checkpoint_dir=tmp_path, **OPTS)
    first.train()  # trains, and releases the directory when done
    Trainer(fresh_net(), *data, verbose=False, checkpoint_dir=tmp_path / "other", **OPTS)


# ---------------------------------------------------------------------------
# The file format has a version; buffers are what the layers declare
# ---------------------------------------------------------------------------


def test_a_checkpoint_of_another_format_version_is_refused_naming_it(data, tmp_path):
    tr, path = trained(data, tmp_path)
    rewrite_checkpoint(path, meta=lambda m: m.__setitem__("version", 99))
    with pytest.raises(CheckpointError, match="format version 99; this xpnet reads version 1"):
        tr.load_checkpoint(path)


class _Counter:
    """A user's layer whose buffer, declared, counts the samples it has trained on."""

    buffer_names = ("seen",)
    takes_train_flg = True

    def __init__(self):
        self.seen = None

    def forward(self, x, train_flg=True):
        if self.seen is None:
            self.seen = np.zeros(1)
        if train_flg:
            self.seen += len(x)
        return x

    def backward(self, dout):
        return dout


def counting_net(init=0):
    from xpnet.models import TwoLayerNet

    xpnet.seed(init)
    net = TwoLayerNet(8, 6, 3, dtype="float64")
    net.layers["Counter"] = _Counter()
    net.layers.move_to_end("Counter", last=False)
    return net


def test_a_declared_buffer_is_checkpointed_and_resumed(data, tmp_path):
    full = run(data, counting_net(), epochs=2)
    interrupted = stops_at(counting_net(), 20)
    with pytest.raises(Interrupt):
        run(data, interrupted, epochs=2, checkpoint_dir=tmp_path)
    with np.load(tmp_path / CHECKPOINT_NAME) as z:
        assert z["buffers/Counter.seen"].tolist() == [13 * 16]  # one epoch of 13 steps
    resumed = run(data, counting_net(1), epochs=2, checkpoint_dir=tmp_path, resume=True)
    assert_same_run(full, resumed)
    assert resumed.network.layers["Counter"].seen.tolist() == [26 * 16]
