"""Learning-rate schedules: the rates themselves (against PyTorch's schedulers where
installed), the trainer setting them epoch by epoch, checkpoints keeping the base rate,
and a resumed run taking the uninterrupted run's rates."""

import json
import math

import numpy as np
import pytest
from test_cli import write_idx
from test_resume import Interrupt, assert_same_run, data, fresh_net, stops_at  # noqa: F401
from trainer_nets import TinyNet

from xpnet.cli import main as cli_main
from xpnet.lr_schedule import SCHEDULES, check_schedule, lr_factor
from xpnet.optimizers import SGD
from xpnet.trainer import CHECKPOINT_NAME, CheckpointError, Trainer

OPTS = dict(epochs=4, mini_batch_size=16, optimizer="Adam", optimizer_param={"lr": 0.01}, seed=3)


# ---------------------------------------------------------------------------
# The rates
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("epochs", [1, 2, 7, 12])
def test_cosine_goes_from_one_down_towards_zero(epochs):
    factors = [lr_factor("cosine", e, epochs) for e in range(epochs)]
    assert factors[0] == 1.0
    assert all(a > b > 0 for a, b in zip(factors, factors[1:]))
    if epochs % 2 == 0:
        assert factors[epochs // 2] == pytest.approx(0.5)
    assert factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * (epochs - 1) / epochs)))


def test_step_is_a_tenth_from_half_way_and_a_hundredth_from_three_quarters():
    assert [lr_factor("step", e, 8) for e in range(8)] == [1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01]
    assert [lr_factor("step", e, 3) for e in range(3)] == [1, 1, 0.1]  # from epoch 1.5, 2.25
    assert [lr_factor("constant", e, 3) for e in range(3)] == [1, 1, 1]


@pytest.mark.parametrize("epochs", [3, 12, 20])
def test_cosine_equals_pytorchs_scheduler_stepped_once_an_epoch(epochs):
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    for e in range(epochs):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * lr_factor("cosine", e, epochs),
                                                          rel=1e-12, abs=1e-15)
        opt.step()
        sched.step()


@pytest.mark.parametrize("epochs", [3, 8, 20, 30])
def test_step_equals_pytorchs_multistep_scheduler(epochs):
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    milestones = [math.ceil(epochs / 2), math.ceil(3 * epochs / 4)]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    for e in range(epochs):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * lr_factor("step", e, epochs))
        opt.step()
        sched.step()


def test_unknown_schedule_and_epoch_outside_the_run_are_clear_errors():
    assert check_schedule(None) == "constant" and check_schedule("Cosine") == "cosine"
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'linear'.*cosine"):
        check_schedule("linear")
    with pytest.raises(ValueError, match="epoch 5 is outside a run of 5 epochs"):
        lr_factor("cosine", 5, 5)
    assert set(SCHEDULES) == {"constant", "cosine", "step"}


# ---------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------


class RecordingSGD(SGD):
    """SGD that records the learning rate of every update."""

    def __init__(self, lr):
        super().__init__(lr=lr)
        self.seen = []

    def update(self, params, grads):
        self.seen.append(self.lr)
        super().update(params, grads)


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_trainer_sets_each_epochs_rate_at_its_start(data, schedule):  # noqa: F811
    opt = RecordingSGD(lr=0.2)
    tr = Trainer(TinyNet(), *data, epochs=4, mini_batch_size=50, optimizer=opt,
                 verbose=False, seed=0, lr_schedule=schedule)
    tr.train()
    per_epoch = tr.iter_per_epoch
    assert per_epoch == 4
    expected = [0.2 * lr_factor(schedule, s // per_epoch, 4) for s in range(tr.max_iter)]
    assert opt.seen == expected
    assert tr.history["lr_schedule"] == schedule
    assert tr.history["optimizer_param"]["lr"] == 0.2  # the base rate, not the last one


def test_a_schedule_changes_the_run_and_constant_is_the_books(data):  # noqa: F811
    plain = Trainer(fresh_net(), *data, verbose=False, **OPTS)
    plain.train()
    constant = Trainer(fresh_net(), *data, verbose=False, lr_schedule="constant", **OPTS)
    constant.train()
    assert_same_run(plain, constant)
    cosine = Trainer(fresh_net(), *data, verbose=False, lr_schedule="cosine", **OPTS)
    cosine.train()
    assert cosine.train_loss_list[: plain.iter_per_epoch + 1] == \
        plain.train_loss_list[: plain.iter_per_epoch + 1]  # epoch 1 is at the full rate
    assert cosine.train_loss_list[-1] != plain.train_loss_list[-1]


def test_constant_leaves_a_rate_changed_by_hand_alone(data):  # noqa: F811
    tr = Trainer(TinyNet(), *data, epochs=2, mini_batch_size=50, optimizer=RecordingSGD(0.1),
                 verbose=False, seed=0)
    tr.train_step()
    tr.optimizer.lr = 0.05
    tr.train_step()
    assert tr.optimizer.seen == [0.1, 0.05]


def test_a_schedule_needs_an_optimizer_with_a_rate(data):  # noqa: F811
    class NoRate(SGD):
        hyperparams = ()

        def __init__(self):
            super().__init__()
            del self.lr

    with pytest.raises(ValueError, match="lr_schedule='cosine' needs an optimizer with a "
                       "learning rate"):
        Trainer(TinyNet(), *data, optimizer=NoRate(), verbose=False, lr_schedule="cosine")
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        Trainer(TinyNet(), *data, verbose=False, lr_schedule="exponential")


# ---------------------------------------------------------------------------
# Checkpoints and resume
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("stop", [7, 31, 45])  # in epochs 1, 3 and 4 (13 steps each)
def test_interrupted_cosine_run_resumes_to_the_uninterrupted_one(data, tmp_path, stop):  # noqa: F811
    full = Trainer(fresh_net(), *data, verbose=False, lr_schedule="cosine", **OPTS)
    full.train()
    ck = tmp_path / "ck"
    with pytest.raises(Interrupt):
        Trainer(stops_at(fresh_net(), stop), *data, verbose=False, lr_schedule="cosine",
                checkpoint_dir=ck, checkpoint_every=5, **OPTS).train()
    resumed = Trainer(fresh_net(1), *data, verbose=False, lr_schedule="cosine",
                      checkpoint_dir=ck, resume=True, checkpoint_every=5, **OPTS)
    assert 0 < resumed.current_iter < stop
    assert resumed.optimizer.lr == 0.01  # the base rate; the step sets its own
    resumed.train()
    assert_same_run(full, resumed)
    assert resumed.optimizer.iter == full.optimizer.iter


def test_checkpoint_keeps_the_base_rate_and_the_schedule(data, tmp_path):  # noqa: F811
    tr = Trainer(fresh_net(), *data, verbose=False, lr_schedule="cosine", checkpoint_dir=tmp_path,
                 **{**OPTS, "epochs": 2})
    tr.train()
    assert tr.optimizer.lr == pytest.approx(0.01 * lr_factor("cosine", 1, 2))
    with np.load(tmp_path / CHECKPOINT_NAME) as f:
        meta = json.loads(str(f["meta"]))
    assert meta["optimizer"]["hyperparams"]["lr"] == 0.01
    assert meta["trainer"]["lr_schedule"] == "cosine"


@pytest.mark.parametrize("change, match", [
    ({"lr_schedule": "step"}, "learning-rate schedule was cosine, now step"),
    ({"lr_schedule": None}, "learning-rate schedule was cosine, now constant"),
    ({"epochs": 6}, r"cosine learning-rate schedule spans 4 epochs, this run asks for 6; "
                    r"resume with epochs=4"),
])
def test_resume_with_another_schedule_is_refused_and_changes_nothing(data, tmp_path, change,  # noqa: F811
                                                                     match):
    with pytest.raises(Interrupt):
        Trainer(stops_at(fresh_net(), 20), *data, verbose=False, lr_schedule="cosine",
                checkpoint_dir=tmp_path, **OPTS).train()
    path = tmp_path / CHECKPOINT_NAME
    before = path.read_bytes()
    net = fresh_net(1)
    params = {k: v.copy() for k, v in net.params.items()}
    kw = {**OPTS, "lr_schedule": "cosine", **change}
    with pytest.raises(CheckpointError, match=match):
        Trainer(net, *data, verbose=False, checkpoint_dir=tmp_path, resume=True, **kw)
    assert path.read_bytes() == before
    for k, v in params.items():
        np.testing.assert_array_equal(net.params[k], v)


def test_a_checkpoint_from_before_schedules_resumes_as_constant(data, tmp_path):  # noqa: F811
    import zipfile

    full = Trainer(fresh_net(), *data, verbose=False, **OPTS)
    full.train()
    with pytest.raises(Interrupt):
        Trainer(stops_at(fresh_net(), 20), *data, verbose=False, checkpoint_dir=tmp_path,
                **OPTS).train()
    path = tmp_path / CHECKPOINT_NAME
    with np.load(path) as f:  # rewritten as a checkpoint without the schedule's field
        arrays = dict(f)
    meta = json.loads(str(arrays["meta"]))
    del meta["trainer"]["lr_schedule"]
    arrays["meta"] = np.array(json.dumps(meta))
    with open(path, "wb") as out:
        np.savez(out, **arrays)
    assert zipfile.is_zipfile(path)
    resumed = Trainer(fresh_net(1), *data, verbose=False, checkpoint_dir=tmp_path, resume=True,
                      **OPTS)
    resumed.train()
    assert_same_run(full, resumed)


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------


def test_cli_trains_with_a_schedule_and_prints_each_epochs_rate(tmp_path, capsys):
    data_dir = write_idx(tmp_path / "idx")
    rc = cli_main(["train", "--model", "TwoLayerNet", "--data-dir", str(data_dir),
                   "--no-download", "--epochs", "2", "--batch-size", "100", "--lr", "0.1",
                   "--optimizer", "SGD", "--lr-schedule", "cosine", "--seed", "0",
                   "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "epoch:1/2," in out and "lr:0.1 ===" in out and "lr:0.05 ===" in out
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["lr_schedule"] == "cosine" and history["config"]["lr_schedule"] == "cosine"
    assert history["optimizer_param"]["lr"] == 0.1


def test_cli_refuses_an_unknown_schedule(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["train", "--lr-schedule", "linear"])
    assert exc.value.code == 2
    assert "invalid choice: 'linear'" in capsys.readouterr().err

