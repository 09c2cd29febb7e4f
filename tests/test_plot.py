"""Figures: learning curves, filters, misclassified images -- PNG files, written atomically."""

import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.image import imread  # noqa: E402

from xpnet import plot  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_width=100):
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = imread(path)
    assert img.shape[1] >= min_width
    assert img[..., :3].std() > 0  # something was drawn
    return img


def history(epochs=4, steps_per_epoch=25):
    rng = np.random.default_rng(0)
    n = epochs * steps_per_epoch
    return {
        "train_loss_list": list(2.3 * np.exp(-np.arange(n) / 30) + 0.1 * rng.random(n)),
        "train_acc_list": list(np.linspace(0.5, 0.95, epochs)),
        "test_acc_list": list(np.linspace(0.45, 0.9, epochs)),
    }


def test_plot_history_writes_a_png(tmp_path):
    out = plot.plot_history(history(), tmp_path / "curves.png")
    assert out == tmp_path / "curves.png"
    img = assert_png(out)
    assert img.shape[1] > img.shape[0]  # loss and accuracy side by side
    assert not list(tmp_path.glob(".*.tmp"))


def test_plot_history_of_a_short_run(tmp_path):
    # fewer steps than the smoothing window, one epoch
    assert_png(plot.plot_history(history(epochs=1, steps_per_epoch=3), tmp_path / "h.png"))


def test_plot_history_takes_a_trainer(tmp_path):
    class Finished:
        history = history()

    assert_png(plot.plot_history(Finished(), tmp_path / "h.png"))


def test_plot_history_names_a_missing_list(tmp_path):
    h = history()
    del h["test_acc_list"]
    with pytest.raises(ValueError, match="history has no 'test_acc_list'"):
        plot.plot_history(h, tmp_path / "h.png")
    assert not (tmp_path / "h.png").exists()


def test_plot_filters(tmp_path):
    W = np.random.default_rng(0).standard_normal((30, 1, 5, 5)).astype(np.float32)
    img = assert_png(plot.plot_filters(W, tmp_path / "filters.png"))
    assert img.shape[1] > img.shape[0]  # 8 to a row, 4 rows
    with pytest.raises(ValueError, match=r"\(FN, C, FH, FW\), got \(30, 25\)"):
        plot.plot_filters(W.reshape(30, 25), tmp_path / "bad.png")


def test_plot_misclassified_shows_the_wrong_ones(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((50, 784)).astype(np.float32)
    t = rng.integers(0, 10, 50)
    y = t.copy()
    wrong = [3, 10, 11, 40]
    y[wrong] = (t[wrong] + 1) % 10
    shown = plot.plot_misclassified(x, t, y, tmp_path / "wrong.png")
    assert shown == [(i, int(t[i]), int(y[i])) for i in wrong]
    assert_png(tmp_path / "wrong.png")
    # one-hot labels, class scores and (N, 1, 28, 28) images give the same answer
    scores = np.eye(10)[y] * 5.0
    again = plot.plot_misclassified(x.reshape(50, 1, 28, 28), np.eye(10)[t], scores,
                                    tmp_path / "again.png", max_view=2)
    assert again == shown[:2]


def drawn_figure(monkeypatch):
    """The figure the next plot function saves, kept for inspection: {'fig': Figure}."""
    drawn = {}
    save = plot.save_figure

    def keep(fig, path, **kw):
        drawn["fig"] = fig
        return save(fig, path, **kw)

    monkeypatch.setattr(plot, "save_figure", keep)
    return drawn


def test_plot_misclassified_titles_true_then_predicted_by_name(tmp_path, monkeypatch):
    drawn = drawn_figure(monkeypatch)
    names = ("T-shirt/top", "Trouser", "Pullover")
    x = np.zeros((3, 1, 28, 28))
    plot.plot_misclassified(x, np.array([0, 1, 2]), np.array([0, 2, 1]), tmp_path / "w.png",
                            class_names=names, title="SimpleConvNet on Fashion-MNIST")
    fig = drawn["fig"]
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Trouser → Pullover", "Pullover → Trouser"]
    assert fig._suptitle.get_text() == "SimpleConvNet on Fashion-MNIST"
    plot.plot_misclassified(x, np.array([0, 1, 2]), np.array([1, 1, 2]), tmp_path / "d.png")
    assert [ax.get_title() for ax in drawn["fig"].axes] == ["0 → 1"]
    with pytest.raises(ValueError, match="3 class names do not cover"):
        plot.plot_misclassified(x, np.array([0, 1, 5]), np.array([0, 1, 2]), tmp_path / "x.png",
                                class_names=names)


def test_plot_filters_and_history_take_a_title(tmp_path, monkeypatch):
    drawn = drawn_figure(monkeypatch)
    W = np.random.default_rng(0).standard_normal((30, 1, 5, 5))
    plot.plot_filters(W, tmp_path / "f.png", title="SimpleConvNet conv1 after 40 steps")
    assert drawn["fig"]._suptitle.get_text() == "SimpleConvNet conv1 after 40 steps"
    plot.plot_history(history(), tmp_path / "h.png", title="TwoLayerNet on MNIST")
    assert drawn["fig"]._suptitle.get_text() == "TwoLayerNet on MNIST"


def test_plot_misclassified_with_nothing_wrong(tmp_path):
    x = np.zeros((5, 1, 8, 8))
    t = np.arange(5)
    assert plot.plot_misclassified(x, t, t, tmp_path / "none.png") == []
    assert (tmp_path / "none.png").read_bytes()[:8] == PNG_MAGIC


def test_plot_misclassified_checks_lengths(tmp_path):
    with pytest.raises(ValueError, match="same length, got 5, 5, 4"):
        plot.plot_misclassified(np.zeros((5, 4)), np.zeros(5), np.zeros(4), tmp_path / "x.png")


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "curves.unknownformat"
    target.write_bytes(b"old")
    with pytest.raises(ValueError):
        plot.plot_history(history(), target)
    assert target.read_bytes() == b"old"
    assert not list(tmp_path.glob(".*.tmp"))


def test_missing_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[plot\]'"):
        plot.plot_history(history(), tmp_path / "h.png")
