"""Every chapter example runs in its quick mode, within its time budget, and writes its
figures; the book's pretrained files are found under the book's own names.

Each example is run as a reader runs it -- ``python examples/chNN_....py --out DIR`` in a
subprocess, with the headless Matplotlib backend -- and must exit 0 and leave every figure
it promises as a non-empty PNG. The project's development data (the 10,000 MNIST digits,
the book's pickles under their fixture names) are passed explicitly, as a user would pass
their own folders: the examples never look for them.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import os
import resource
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import xpnet
from xpnet.datasets import DatasetError, load_mnist

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SHARED = Path(os.environ.get("XPNET_SHARED", REPO.parent / "shared"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Quick mode is promised to take under a minute on 2 cores. Measured as CPU time on one
# thread (what an idle core would take, whatever else this machine runs), with a margin.
QUICK_CPU_SECONDS = 45

# The book's pretrained files: the fixture's name -> (chapter folder, the book's name).
BOOK_NAMES = {
    "ch03_sample_weight.pkl": ("ch03", "sample_weight.pkl"),
    "ch07_simple_convnet_params.pkl": ("ch07", "params.pkl"),
    "ch08_deep_convnet_params.pkl": ("ch08", "deep_convnet_params.pkl"),
}

# script -> the figures its quick mode writes
FIGURES = {
    "ch01_python_numpy.py": ["sin_cos.png", "image.png"],
    "ch02_perceptron.py": ["decision_regions.png"],
    "ch03_neural_network.py": ["activations.png", "predictions.png"],
    "ch04_learning.py": [
        "numerical_diff.png", "gradient_field.png", "gradient_descent.png",
        "numerical_training.png", "learning_curves.png",
    ],
    "ch05_backprop.py": ["computational_graph.png", "gradient_timing.png", "learning_curves.png"],
    "ch06_learning_techniques.py": [
        "optimizer_paths.png", "optimizer_compare.png", "weight_init_hist.png",
        "weight_init_compare.png", "batchnorm.png", "overfitting.png", "hyperparameter_search.png",
    ],
    "ch07_cnn.py": ["conv_by_hand.png", "learning_curves.png", "filters_before.png",
                    "filters_after.png"],
    "ch08_deep_learning.py": ["misclassified.png", "dtype_speed.png"],
    "ch08_representative_cnns.py": ["representative_cnns.png"],
}


@functools.cache
def _data_on_disk() -> bool:
    """Whether the examples find MNIST or Fashion-MNIST without downloading (in xpnet's
    usual places): the tests never fetch data from the internet."""
    for name in ("mnist", "fashion-mnist"):
        try:
            load_mnist(dataset=name, download=False)
            return True
        except DatasetError:
            pass
    return False


NEEDS_DATA = {p.name for p in EXAMPLES.glob("ch*.py") if "data=True" in p.read_text()}


def run_example(script, *args, timeout=240, env=None):
    # As a reader runs them: no PYTHONPATH needed (the examples find the clone's xpnet
    # when it is not installed), headless Matplotlib.
    env = dict(os.environ, MPLBACKEND="Agg", **(env or {}))
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def book_folder(tmp_path, *fixtures, layout="flat"):
    """A folder with the book's pretrained files under the book's own names, as a user has
    them: ``flat`` (the files side by side) or ``repository`` (a checkout: ch03/, ...)."""
    folder = tmp_path / "book"
    for fixture in fixtures:
        source = SHARED / "fixtures" / "book" / fixture
        if not source.is_file():
            pytest.skip(f"{source} is not present")
        chapter, name = BOOK_NAMES[fixture]
        target = folder / chapter / name if layout == "repository" else folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)
    return folder


def tiny_mnist_pair(directory: Path, n=20) -> Path:
    """An ``images-idx3-ubyte.gz`` + ``labels-idx1-ubyte.gz`` pair of ``n`` blank digits."""
    directory.mkdir(parents=True, exist_ok=True)
    with gzip.open(directory / "images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, n, 28, 28) + bytes(n * 784))
    with gzip.open(directory / "labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, n) + bytes(range(10)) * (n // 10))
    return directory


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(FIGURES))
def test_example_quick_mode_writes_its_figures_within_its_budget(script, tmp_path):
    if script in NEEDS_DATA and not _data_on_disk():
        pytest.skip("no MNIST or Fashion-MNIST on disk (apt-get install dataset-fashion-mnist)")
    out = tmp_path / "figures"
    # One thread: the timings an example prints stay meaningful on a busy machine, and
    # its CPU time is the time it takes on an idle core.
    before = children_cpu_seconds()
    proc = run_example(script, "--out", str(out), "--threads", "1")
    cpu = children_cpu_seconds() - before
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert cpu < QUICK_CPU_SECONDS, f"{script}'s quick mode took {cpu:.0f} s of CPU"
    assert "shared" not in proc.stdout + proc.stderr  # no development folder named
    assert "Warning" not in proc.stderr, proc.stderr[-2000:]
    for name in FIGURES[script]:
        path = out / name
        assert path.is_file(), f"{script} did not write {name} (wrote {os.listdir(out)})"
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, f"{name} is not a real PNG"
    assert "done in" in proc.stdout


def test_every_chapter_has_an_example():
    chapters = sorted(p.name[:4] for p in EXAMPLES.glob("ch[0-9][0-9]_*.py"))
    assert chapters == sorted(name[:4] for name in FIGURES)


@pytest.mark.skipif(xpnet.gpu_available(), reason="a GPU is present")
def test_device_gpu_without_gpu_fails_with_one_sentence(tmp_path):
    proc = run_example("ch02_perceptron.py", "--device", "gpu", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: device 'gpu' was asked for, but ")
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.slow
def test_without_mnist_the_examples_fall_back_to_fashion_mnist(tmp_path, fashion_dir):
    if Path("/usr/share/datasets/mnist").exists():
        pytest.skip("a system-wide MNIST is installed")
    proc = run_example("ch01_python_numpy.py", "--out", str(tmp_path), "--threads", "1",
                       "--data-dir", str(tmp_path / "no-mnist-here"),
                       env={"XPNET_DATA": str(tmp_path / "empty-cache")})
    assert proc.returncode == 0, proc.stderr
    assert "note: MNIST, the book's dataset, is not on this machine" in proc.stdout
    assert "image: Fashion-MNIST" in proc.stdout
    assert (tmp_path / "image.png").stat().st_size > 1000


def test_no_example_looks_in_the_development_folders():
    sources = [*EXAMPLES.glob("*.py"), *(REPO / "xpnet").rglob("*.py")]
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for word in ("shared/", "XPNET_SHARED", "fixtures/book", "mnist-10k"):
            assert word not in text, f"{path.relative_to(REPO)} mentions {word}"


def common_module(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import common

    return common


@pytest.mark.parametrize("layout", ["flat", "repository"])
@pytest.mark.parametrize("fixture", sorted(BOOK_NAMES))
def test_weights_are_found_under_the_books_own_names(tmp_path, monkeypatch, capsys, layout,
                                                     fixture):
    common = common_module(monkeypatch)
    folder = book_folder(tmp_path, fixture, layout=layout)
    chapter, name = BOOK_NAMES[fixture]
    args = argparse.Namespace(weights=folder)
    path = common.book_weights(args, int(chapter[2:]), "MNIST")
    assert path is not None and path.name == name and path.resolve().is_file()
    # trained on digits: not used with Fashion-MNIST, and the note says why
    assert common.book_weights(args, int(chapter[2:]), "Fashion-MNIST") is None
    assert "trained on MNIST digits" in capsys.readouterr().out


def test_weights_not_found_say_where_the_books_files_come_from(tmp_path, monkeypatch, capsys):
    common = common_module(monkeypatch)
    (tmp_path / "ch03_sample_weight.pkl").write_bytes(b"")  # the old, renamed file: not it
    assert common.book_weights(argparse.Namespace(weights=tmp_path), 3, "MNIST") is None
    out = capsys.readouterr().out
    assert f"sample_weight.pkl is neither in {tmp_path} nor in {tmp_path / 'ch03'}" in out
    assert "ch03/sample_weight.pkl of https://github.com/oreilly-japan/" in out
    assert common.book_weights(argparse.Namespace(weights=None), 8, "MNIST") is None
    assert "no --weights DIR given" in capsys.readouterr().out


def test_example_help_names_the_books_files(tmp_path):
    proc = run_example("ch08_deep_learning.py", "--help")
    text = " ".join(proc.stdout.split())
    for name in ("ch03/sample_weight.pkl", "ch07/params.pkl", "ch08/deep_convnet_params.pkl"):
        assert name in text
    assert "shared" not in text


@pytest.mark.slow
def test_without_the_books_weights_chapter_3_trains_its_own(tmp_path, mnist10k_dir):
    proc = run_example("ch03_neural_network.py", "--out", str(tmp_path), "--threads", "1",
                       "--data-dir", str(mnist10k_dir),
                       "--weights", str(tmp_path / "no-weights-here"))
    assert proc.returncode == 0, proc.stderr
    assert "note: the book's sample_weight.pkl is neither in" in proc.stdout
    accuracy = float(proc.stdout.split("Accuracy (batches of 100):")[1].split()[0])
    assert accuracy > 0.8  # two epochs of Adam on 8,000 digits
    assert (tmp_path / "predictions.png").stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["flat", "repository"])
def test_chapter_3_reaches_the_books_accuracy_with_its_weights(tmp_path, mnist10k_dir, layout):
    weights = book_folder(tmp_path, "ch03_sample_weight.pkl", layout=layout)
    proc = run_example("ch03_neural_network.py", "--out", str(tmp_path), "--threads", "1",
                       "--full", "--data-dir", str(mnist10k_dir), "--weights", str(weights))
    assert proc.returncode == 0, proc.stderr
    assert "loaded sample_weight.pkl" in proc.stdout
    assert "y = [0.31682708 0.69627909]" in proc.stdout
    # the fixture's README: 93.74% on these 10,000 digits
    assert "Accuracy (batches of 100): 0.9374" in proc.stdout
    assert "Accuracy (one by one):    0.9374" in proc.stdout


@pytest.mark.slow
def test_chapter_7_shows_the_books_filters_with_its_params_pkl(tmp_path, mnist10k_dir):
    weights = book_folder(tmp_path, "ch07_simple_convnet_params.pkl", layout="repository")
    proc = run_example("ch07_cnn.py", "--out", str(tmp_path / "out"), "--threads", "1",
                       "--data-dir", str(mnist10k_dir), "--weights", str(weights))
    assert proc.returncode == 0, proc.stderr
    accuracy = float(proc.stdout.split("(params.pkl): accuracy")[1].split()[0])
    assert accuracy > 0.95
    assert (tmp_path / "out" / "filters_book.png").stat().st_size > 1000


@pytest.mark.slow
def test_chapter_8_shows_the_mistakes_of_the_books_deepconvnet(tmp_path, mnist10k_dir):
    weights = book_folder(tmp_path, "ch08_deep_convnet_params.pkl", layout="flat")
    proc = run_example("ch08_deep_learning.py", "--out", str(tmp_path / "out"), "--threads",
                       "1", "--data-dir", str(mnist10k_dir), "--weights", str(weights))
    assert proc.returncode == 0, proc.stderr
    assert "loaded the book's DeepConvNet from deep_convnet_params.pkl" in proc.stdout
    accuracy = float(proc.stdout.split("8.1 DeepConvNet (float32): accuracy")[1].split()[0])
    assert accuracy > 0.95  # 97.58% on all 10,000 of these digits (benchmarks/RESULTS.md)
    assert (tmp_path / "out" / "misclassified.png").stat().st_size > 1000


def test_chapter_6_marks_the_diverged_batchnorm_run_without_warnings(tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import ch06_learning_techniques as ch06

    rng = np.random.default_rng(0)
    x, t = rng.random((1000, 784)), rng.integers(0, 10, 1000)
    args = argparse.Namespace(device="cpu", full=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow or loss-growth warning fails the test
        acc, diverged = ch06.batchnorm_run(args, x, t, 1.0, False, 2)
    assert diverged and len(acc) < 2
    acc, diverged = ch06.batchnorm_run(args, x, t, 0.01, True, 1)
    assert not diverged and len(acc) == 1


def test_chapter_8_prints_only_the_speed_ups_and_points_to_the_report(tmp_path, monkeypatch,
                                                                      capsys):
    report = tmp_path / "benchmarks" / "RESULTS.md"
    report.parent.mkdir()
    report.write_text(
        "# Benchmark results\n\n## Machine and settings\n\n| CPU | x |\n| **BLAS** | y |\n\n"
        "## DeepConvNet at batch 100\n\n| figure | value |\n|---|---|\n"
        "| xpnet training step | 102 ms |\n"
        "| **speed-up of xpnet over the book's code** | **11.3×** |\n\n"
        "### Inference in float64, float32, float16 (CPU, book 8.3.4)\n\n| float16 | 1 ms |\n\n"
        "float16 takes 3.03× the float32 time.\n\n"
        "## On an NVIDIA GPU\n\n| xpnet GPU epoch | 12.0 s |\n"
        "| xpnet CPU epoch | 42.8 s, GPU speed-up 3.5x |\n\n"
        "## All groups\n\n| **other** | 1 |\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import ch08_deep_learning as ch08

    monkeypatch.setattr(ch08, "REPO", tmp_path)
    monkeypatch.setattr(ch08, "RESULTS", report)
    ch08.speedup_table()
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "8.3 measured by the benchmark suite (every table: benchmarks/RESULTS.md):",
        "      speed-up of xpnet over the book's code: 11.3×",
        "      float16 takes 3.03× the float32 time.",
        "      xpnet CPU epoch: 42.8 s, GPU speed-up 3.5x",
    ]

    report.unlink()
    ch08.speedup_table()
    assert "no benchmark results yet" in capsys.readouterr().out


def test_a_malicious_weights_file_is_refused_with_one_message(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    marker = tmp_path / "pwned"
    # A pickle that would run `touch <marker>` through os.system if it were unpickled.
    (weights / "sample_weight.pkl").write_bytes(
        b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    )
    proc = run_example("ch03_neural_network.py", "--out", str(tmp_path / "out"),
                       "--data-dir", str(tiny_mnist_pair(tmp_path / "digits")),
                       "--weights", str(weights))
    assert proc.returncode == 2
    assert "refused to load global 'os.system'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()
