"""Every chapter example runs in its quick mode and writes its figures.

Each example is run as a reader runs it -- ``python examples/chNN_....py --out DIR`` in a
subprocess, with the headless Matplotlib backend -- and must exit 0 and leave every figure
it promises as a non-empty PNG.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

import xpnet
from xpnet.datasets import DatasetError, load_mnist

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SHARED = Path(os.environ.get("XPNET_SHARED", REPO.parent / "shared"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

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
}


@functools.cache
def _data_on_disk() -> bool:
    """Whether the examples find MNIST (the shared 10,000 digits or the full set) or
    Fashion-MNIST without downloading: the tests never fetch data from the internet."""
    if (SHARED / "data" / "mnist-10k").is_dir():
        return True
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


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(FIGURES))
def test_example_quick_mode_writes_its_figures(script, tmp_path):
    if script in NEEDS_DATA and not _data_on_disk():
        pytest.skip("no MNIST or Fashion-MNIST on disk (apt-get install dataset-fashion-mnist)")
    out = tmp_path / "figures"
    # One thread: the timings an example prints stay meaningful on a busy machine.
    proc = run_example(script, "--out", str(out), "--threads", "1")
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
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
    assert "note: no MNIST found" in proc.stdout
    assert "image: Fashion-MNIST" in proc.stdout
    assert (tmp_path / "image.png").stat().st_size > 1000


@pytest.mark.slow
def test_without_the_books_weights_chapter_3_trains_its_own(tmp_path, mnist10k_dir):
    proc = run_example("ch03_neural_network.py", "--out", str(tmp_path), "--threads", "1",
                       "--weights", str(tmp_path / "no-weights-here"))
    assert proc.returncode == 0, proc.stderr
    assert "note: the book's weights ch03_sample_weight.pkl are not in" in proc.stdout
    accuracy = float(proc.stdout.split("Accuracy (batches of 100):")[1].split()[0])
    assert accuracy > 0.8  # two epochs of Adam on 8,000 digits
    assert (tmp_path / "predictions.png").stat().st_size > 1000


@pytest.mark.slow
def test_chapter_3_reaches_the_books_accuracy_with_its_weights(tmp_path, book_fixture,
                                                               mnist10k_dir):
    book_fixture("ch03_sample_weight.pkl")
    proc = run_example("ch03_neural_network.py", "--out", str(tmp_path), "--threads", "1",
                       "--full")
    assert proc.returncode == 0, proc.stderr
    assert "y = [0.31682708 0.69627909]" in proc.stdout
    # the fixture's README: 93.74% on these 10,000 digits
    assert "Accuracy (batches of 100): 0.9374" in proc.stdout
    assert "Accuracy (one by one):    0.9374" in proc.stdout


def test_chapter_8_prints_the_benchmark_headline_table(tmp_path, monkeypatch, capsys):
    report = tmp_path / "benchmarks" / "RESULTS.md"
    report.parent.mkdir()
    report.write_text(
        "# Benchmark results\n\n## Machine and settings\n\n| CPU | x |\n\n"
        "## DeepConvNet at batch 100\n\n| figure | value |\n|---|---|\n"
        "| GPU speed-up over xpnet on the CPU | 41.0x |\n\n"
        "### Inference in float64, float32, float16 (CPU, book 8.3.4)\n\n| float16 | 1 ms |\n\n"
        "## On an NVIDIA GPU\n\n| xpnet GPU epoch | 12.0 s |\n\n"
        "## All groups\n\nSpeed-up = the baseline's median / the case's median\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import ch08_deep_learning as ch08

    monkeypatch.setattr(ch08, "REPO", tmp_path)
    monkeypatch.setattr(ch08, "RESULTS", report)
    ch08.speedup_table()
    out = capsys.readouterr().out
    assert "8.3 from benchmarks/RESULTS.md" in out
    assert "| GPU speed-up over xpnet on the CPU | 41.0x |" in out
    assert "(CPU, book 8.3.4)" in out
    assert "| xpnet GPU epoch | 12.0 s |" in out
    assert "Machine and settings" not in out and "All groups" not in out

    report.unlink()
    ch08.speedup_table()
    assert "no benchmark results yet" in capsys.readouterr().out


def test_a_malicious_weights_file_is_refused_with_one_message(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    marker = tmp_path / "pwned"
    # A pickle that would run `touch <marker>` through os.system if it were unpickled.
    (weights / "ch03_sample_weight.pkl").write_bytes(
        b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    )
    proc = run_example("ch03_neural_network.py", "--out", str(tmp_path / "out"),
                       "--weights", str(weights))
    assert proc.returncode == 2
    assert "refused to load global 'os.system'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()
