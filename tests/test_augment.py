"""Data augmentation (book 8.1.1): ShiftFlip against a plain loop on random shapes, moves
and views; the trainer moving each mini-batch by draws from the step's own stream (so a
resumed run equals the uninterrupted one); clear errors for what cannot be augmented."""

import json

import numpy as np
import pytest
from replicas import Replicas
from test_cli import write_idx
from test_resume import Interrupt, assert_same_run, stops_at
from trainer_nets import TinyNet

import xpnet
from xpnet.augment import ShiftFlip
from xpnet.cli import main as cli_main
from xpnet.cuda_graph import graph_fallback_reason
from xpnet.step_streams import StepStreams
from xpnet.trainer import Trainer


def moved_by_loop(x, dy, dx, flip):
    """The plain definition: out[n, c, i, j] = x[n, c, i + dy, j' + dx], j' the mirrored
    column where flipped, 0 outside the image."""
    n, c, h, w = x.shape
    out = np.zeros_like(x)
    for k in range(n):
        for i in range(h):
            for j in range(w):
                src_i = i + dy[k]
                src_j = (w - 1 - j if flip[k] else j) + dx[k]
                if 0 <= src_i < h and 0 <= src_j < w:
                    out[k, :, i, j] = x[k, :, src_i, src_j]
    return out


def views(x):
    """The same values as C order, Fortran order, with negative strides and transposed."""
    yield x
    yield np.asfortranarray(x)
    yield np.ascontiguousarray(x[::-1])[::-1]
    yield np.ascontiguousarray(x.transpose(3, 2, 1, 0)).transpose(3, 2, 1, 0)


@pytest.mark.parametrize("seed", range(6))
def test_shift_flip_equals_the_plain_loop_on_random_shapes_moves_and_views(seed):
    rng = np.random.default_rng(seed)
    n, c, h, w = (int(v) for v in rng.integers(1, 6, 4))
    s = int(rng.integers(0, 4))
    aug = ShiftFlip(s, flip=bool(seed % 2))
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    moves = aug.draw(rng, n)
    expected = moved_by_loop(x, *moves)
    for view in views(x):
        before = view.copy()
        out = aug.apply(view, *moves)
        assert out.dtype == x.dtype and out.shape == x.shape
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(view, before)  # the input is left as it was


def test_known_moves_of_a_small_image():
    x = np.arange(12, dtype=np.float64).reshape(1, 1, 3, 4)
    aug = ShiftFlip(1, flip=True)
    np.testing.assert_array_equal(aug.apply(x, [1], [0], [False])[0, 0],
                                  [[4, 5, 6, 7], [8, 9, 10, 11], [0, 0, 0, 0]])
    np.testing.assert_array_equal(aug.apply(x, [0], [-1], [True])[0, 0],
                                  [[2, 1, 0, 0], [6, 5, 4, 0], [10, 9, 8, 0]])
    np.testing.assert_array_equal(aug.apply(x, [0], [0], [False]), x)


def test_draws_cover_the_range_and_flip_half_only_when_asked():
    rng = np.random.default_rng(0)
    dy, dx, flip = ShiftFlip(2, flip=True).draw(rng, 20000)
    assert set(dy.tolist()) == set(dx.tolist()) == {-2, -1, 0, 1, 2}
    assert 0.48 < flip.mean() < 0.52
    _, _, never = ShiftFlip(2, flip=False).draw(np.random.default_rng(0), 1000)
    assert not never.any()
    # the stream advances alike with and without flips (a run's later draws do not shift)
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    ShiftFlip(2, True).draw(a, 10), ShiftFlip(2, False).draw(b, 10)
    assert a.random() == b.random()


def test_bad_input_is_one_clear_error():
    aug = ShiftFlip(2)
    with pytest.raises(ValueError, match=r"needs images \(N, C, H, W\), got shape \(4, 784\)"):
        aug.apply(np.zeros((4, 784)), *aug.draw(np.random.default_rng(0), 4))
    with pytest.raises(ValueError, match="4 images need 4 moves"):
        aug.apply(np.zeros((4, 1, 5, 5)), [0] * 3, [0] * 3, [False] * 3)
    with pytest.raises(ValueError, match="beyond max_shift=2"):
        aug.apply(np.zeros((1, 1, 5, 5)), [3], [0], [False])
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="max_shift must be a non-negative integer"):
            ShiftFlip(bad)


# ---------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------


class ImageTinyNet(TinyNet):
    """TinyNet on images (N, 1, 4, 4), recording every training batch it is given."""

    def __init__(self, **kw):
        super().__init__(d=16, **kw)
        self.batches = []

    def _forward(self, x, train_flg):
        return super()._forward(x.reshape(len(x), -1), train_flg)

    def gradient(self, x, t):
        self.batches.append(np.array(x))
        return super().gradient(x, t)


@pytest.fixture
def images():
    rng = np.random.default_rng(1)
    x = rng.random((160, 1, 4, 4))
    t = (x[:, 0, :2].sum(axis=(1, 2)) > x[:, 0, 2:].sum(axis=(1, 2))).astype(np.int64)
    return x[:120], t[:120], x[120:], t[120:]


OPTS = dict(epochs=3, mini_batch_size=16, optimizer="Adam", optimizer_param={"lr": 0.05}, seed=7)


def net(init=0):
    xpnet.seed(init)
    return ImageTinyNet(classes=2, dropout=0.25)


def test_each_batch_is_moved_by_draws_from_its_steps_stream(images):
    aug = ShiftFlip(1, flip=True)
    tr = Trainer(net(), *images, verbose=False, augment=aug, **OPTS)
    tr.train()
    streams = StepStreams(7)
    for step, seen in enumerate(tr.network.batches):
        rng = streams.start(step)()
        idx = rng.integers(0, 120, size=16)
        expected = aug.apply(images[0][idx], *aug.draw(rng, 16))
        np.testing.assert_array_equal(seen, expected)
    assert len(tr.network.batches) == tr.max_iter
    assert tr.history["augment"] == "ShiftFlip(max_shift=1, flip=True)"


def test_data_parallel_ranks_get_their_half_of_the_one_process_augmented_batch(images):
    """Moves are drawn for the global batch, then sharded with the indices: rank r's
    network sees exactly rank r's half of what one process would see, every step."""
    aug = ShiftFlip(1, flip=True)
    one = Trainer(net(), *images, verbose=False, augment=aug, **OPTS)
    one.train()
    for rank in (0, 1):
        tr = Trainer(net(), *images, verbose=False, augment=aug, communicator=Replicas(rank),
                     **OPTS)
        tr.train()
        assert len(tr.network.batches) == len(one.network.batches) == tr.max_iter
        half = OPTS["mini_batch_size"] // 2
        for step, (seen, whole) in enumerate(zip(tr.network.batches, one.network.batches)):
            np.testing.assert_array_equal(seen, whole[rank * half:(rank + 1) * half],
                                          err_msg=f"rank {rank}, step {step}")


def test_augmentation_changes_the_run_and_an_inactive_one_does_not(images):
    plain = Trainer(net(), *images, verbose=False, **OPTS)
    plain.train()
    still = Trainer(net(), *images, verbose=False, augment=ShiftFlip(0), **OPTS)
    assert still.augment is None
    still.train()
    assert_same_run(plain, still)
    moved = Trainer(net(), *images, verbose=False, augment=ShiftFlip(1), **OPTS)
    moved.train()
    assert moved.train_loss_list != plain.train_loss_list


def test_an_interrupted_augmented_run_resumes_to_the_uninterrupted_one(images, tmp_path):
    full = Trainer(net(), *images, verbose=False, augment=ShiftFlip(1, True), **OPTS)
    full.train()
    with pytest.raises(Interrupt):
        Trainer(stops_at(net(), 12), *images, verbose=False, augment=ShiftFlip(1, True),
                checkpoint_dir=tmp_path, checkpoint_every=4, **OPTS).train()
    resumed = Trainer(net(1), *images, verbose=False, augment=ShiftFlip(1, True),
                      checkpoint_dir=tmp_path, checkpoint_every=4, resume=True, **OPTS)
    assert resumed.current_iter == 8
    resumed.train()
    assert_same_run(full, resumed)


def test_flattened_data_is_refused_at_construction():
    x = np.zeros((20, 16))
    t = np.zeros(20, dtype=np.int64)
    with pytest.raises(ValueError, match=r"moves images \(N, C, H, W\), but x_train has "
                       r"shape \(20, 16\): load the data with flatten=False"):
        Trainer(TinyNet(d=16, classes=2), x, t, x, t, mini_batch_size=10, verbose=False,
                augment=ShiftFlip(2))


def test_an_augmented_gpu_run_gives_its_reason_for_running_eagerly(images):
    tr = Trainer(net(), *images, verbose=False, augment=ShiftFlip(1), **OPTS)
    tr.device = "gpu"  # as graph_fallback_reason sees a GPU trainer
    assert "augmentation draws each step's moves on the host" in graph_fallback_reason(tr)


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------


def test_cli_augments_a_cnn_and_records_it(tmp_path, capsys):
    data_dir = write_idx(tmp_path / "idx", n_train=100, n_test=50)
    rc = cli_main(["train", "--model", "SimpleConvNet", "--data-dir", str(data_dir),
                   "--no-download", "--epochs", "1", "--batch-size", "50", "--seed", "0",
                   "--augment-shift", "2", "--augment-flip", "--quiet",
                   "--out", str(tmp_path / "run")])
    assert rc == 0, capsys.readouterr().err
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["augment"] == "ShiftFlip(max_shift=2, flip=True)"


@pytest.mark.parametrize("argv, match", [
    (["--model", "TwoLayerNet", "--augment-flip"], "need a convolutional model"),
    (["--model", "LeNet", "--augment-shift", "-1"], "--augment-shift must be a non-negative"),
])
def test_cli_refuses_augmentation_it_cannot_do(tmp_path, capsys, argv, match):
    rc = cli_main(["train", "--data-dir", str(tmp_path / "none"), "--no-download", *argv])
    assert rc == 2
    assert match in capsys.readouterr().err
