"""The ``xpnet`` command: train and search end to end on a tiny IDX dataset, --help,
unknown names, and library errors as one message with exit status 2."""

import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xpnet import cli
from xpnet.io import load_params

REPO = Path(__file__).resolve().parents[1]


def write_idx(directory: Path, n_train=300, n_test=100, seed=0):
    """The four standard IDX files of a learnable 28x28, 10-class problem: each class
    lights its own 7x7 block (plus noise)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = (rng.random((n, 28, 28)) * 80).astype(np.uint8)
        for i, c in enumerate(labels):
            r, q = divmod(int(c), 4)
            images[i, 7 * r : 7 * r + 7, 7 * q : 7 * q + 7] = 255
        with gzip.open(directory / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        with gzip.open(directory / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, n) + labels.tobytes())
    return directory


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_idx(tmp_path_factory.mktemp("idx"))


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def train_args(data_dir, *more):
    return ["train", "--data-dir", data_dir, "--no-download", "--seed", "0", *more]


def test_train_writes_params_history_and_plot(capsys, data_dir, tmp_path):
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, *train_args(data_dir, "--model", "twolayernet", "--epochs", 3,
                                             "--batch-size", 30, "--lr", 0.01, "--out", out_dir))
    assert code == 0, err
    assert "=== epoch:3/3" in out and "wrote" in out
    history = json.loads((out_dir / "history.json").read_text())
    assert history["model"] == "TwoLayerNet" and history["optimizer"] == "Adam"
    assert history["optimizer_param"]["lr"] == 0.01
    assert len(history["train_loss_list"]) == 30 and len(history["test_acc_list"]) == 3
    assert history["train_size"] == 300 and history["test_size"] == 100
    assert history["final_test_acc"] > 0.5  # the blocks are easy to tell apart
    assert history["config"]["model"] == "TwoLayerNet"
    params = load_params(out_dir / "params.npz")
    assert set(params) == {"W1", "b1", "W2", "b2"} and params["W1"].shape == (784, 50)
    assert params["W1"].dtype == np.float32
    if pytest.importorskip("matplotlib"):
        assert (out_dir / "history.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_train_a_conv_net_on_images(capsys, data_dir, tmp_path):
    code, out, err = run(capsys, *train_args(
        data_dir, "--model", "SimpleConvNet", "--hidden", 20, "--epochs", 1, "--train-size", 60,
        "--test-size", 20, "--batch-size", 20, "--quiet", "--out", tmp_path))
    assert code == 0, err
    assert out == ""  # --quiet
    params = load_params(tmp_path / "params.npz")
    assert params["W1"].shape == (30, 1, 5, 5) and params["W2"].shape[1] == 20


def test_train_multilayernetextend_options(capsys, data_dir, tmp_path):
    code, out, err = run(capsys, *train_args(
        data_dir, "--model", "MULTILAYERNETEXTEND", "--hidden", "40,30", "--batchnorm",
        "--dropout", 0.1, "--weight-decay", 1e-4, "--optimizer", "momentum", "--lr", 0.05,
        "--optimizer-param", "momentum=0.8", "--epochs", 1, "--dtype", "float64", "--quiet",
        "--out", tmp_path))
    assert code == 0, err
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["optimizer_param"] == {"lr": 0.05, "momentum": 0.8}
    params = load_params(tmp_path / "params.npz")
    assert params["W2"].shape == (40, 30) and params["W1"].dtype == np.float64
    assert "gamma1" in params and "running_mean1" in params  # BatchNorm and its statistics


@pytest.mark.slow
def test_resume_from_the_command_line_matches_one_run(capsys, data_dir, tmp_path):
    common = ("--epochs", "3", "--batch-size", "50", "--quiet")
    assert run(capsys, *train_args(data_dir, *common, "--out", tmp_path / "full"))[0] == 0
    ck = tmp_path / "ck"
    first = train_args(data_dir, "--epochs", 2, "--batch-size", 50, "--quiet",
                       "--checkpoint-dir", ck)
    assert run(capsys, *first)[0] == 0
    # the same command again would overwrite the checkpoint: refused
    code, _, err = run(capsys, *first)
    assert code == 2 and "already exists" in err and "--resume" in err
    code, _, err = run(capsys, *train_args(data_dir, *common, "--checkpoint-dir", ck,
                                           "--resume", "--out", tmp_path / "resumed"))
    assert code == 0, err
    a = load_params(tmp_path / "full" / "params.npz")
    b = load_params(tmp_path / "resumed" / "params.npz")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    ha = json.loads((tmp_path / "full" / "history.json").read_text())
    hb = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert ha["train_loss_list"] == hb["train_loss_list"]


def test_search_writes_ranked_trials(capsys, data_dir, tmp_path):
    code, out, err = run(capsys, "search", "--data-dir", data_dir, "--no-download",
                         "--hidden", "20,20", "--trials", 3, "--epochs", 2, "--train-size", 200,
                         "--lr-range", -3, -1, "--seed", 1, "--out", tmp_path)
    assert code == 0, err
    assert "[3/3] val acc:" in out and "Best-1(val acc:" in out
    result = json.loads((tmp_path / "search.json").read_text())
    accs = [t["val_acc"] for t in result["trials"]]
    assert len(accs) == 3 and accs == sorted(accs, reverse=True)
    assert all(1e-3 <= t["lr"] <= 1e-1 and 1e-8 <= t["weight_decay"] <= 1e-4
               for t in result["trials"])


# ---------------------------------------------------------------------------
# Help and errors
# ---------------------------------------------------------------------------


def test_help_of_the_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "xpnet", "--help"], capture_output=True,
                            text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0
    assert "train" in result.stdout and "search" in result.stdout


def test_train_help_names_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--model", "--dataset", "--data-dir", "--optimizer", "--lr",
                   "--optimizer-param", "--epochs", "--batch-size", "--seed", "--device",
                   "--dtype", "--checkpoint-dir", "--checkpoint-every", "--resume", "--out",
                   "--train-size", "--test-size", "--quiet"):
        assert option in out
    assert "TwoLayerNet, MultiLayerNet, MultiLayerNetExtend, SimpleConvNet, DeepConvNet" in (
        " ".join(out.split())
    )


def test_unknown_model_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--model", "AlexNet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown model 'AlexNet'; choose one of TwoLayerNet, MultiLayerNet" in err


def test_unknown_optimizer_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--optimizer", "adamw"])
    assert "choose one of SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "500"], "mini_batch_size 500 is larger than the training set (300"),
    (["--model", "SimpleConvNet", "--dropout", "0.5"],
     "--dropout does not apply to SimpleConvNet (only to MultiLayerNetExtend)"),
    (["--optimizer", "sgd", "--optimizer-param", "momentum=0.9"], "SGD has no parameter"),
    (["--resume"], "--resume and --checkpoint-every need --checkpoint-dir"),
    (["--optimizer", "sgd", "--lr", "1e30", "--epochs", "2"], "lower learning rate"),
])
def test_library_errors_are_one_message_and_status_2(capsys, data_dir, argv, message):
    with np.errstate(all="ignore"):
        code, _, err = run(capsys, *train_args(data_dir, "--quiet", *argv))
    assert code == 2
    assert err.startswith("xpnet: error: ") and message in err
    assert "Traceback" not in err


def test_missing_dataset_names_where_it_looked(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--data-dir", tmp_path / "empty", "--no-download",
                       "--dataset", "mnist")
    assert code == 2 and "not in data_dir" in err and "empty" in err and "Traceback" not in err


def test_bad_optimizer_param_syntax(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--optimizer-param", "momentum"])
    assert exc.value.code == 2
    assert "expected NAME=NUMBER" in capsys.readouterr().err


def test_a_registered_command_appears(capsys, monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", dict(cli.COMMANDS))
    seen = {}

    def configure(p):
        p.add_argument("--reps", type=int, default=3)

    def run_it(args):
        seen["reps"] = args.reps
        return 0

    cli.register_command("hello", help="say hello", configure=configure, run=run_it)
    assert cli.main(["hello", "--reps", "5"]) == 0 and seen == {"reps": 5}
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "hello" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# Refused up front, naming the option, before any data is loaded
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--lr", "0"], "--lr must be a positive finite number, got 0.0"),
    (["--lr", "-0.1"], "--lr must be a positive finite number, got -0.1"),
    (["--lr", "nan"], "--lr must be a positive finite number, got nan"),
    (["--lr", "inf"], "--lr must be a positive finite number, got inf"),
    (["--optimizer", "momentum", "--optimizer-param", "momentum=nan"],
     "--optimizer-param momentum=nan: the value must be finite"),
    (["--optimizer", "adam", "--optimizer-param", "beta1=inf"],
     "--optimizer-param beta1=inf: the value must be finite"),
])
def test_unusable_numbers_are_refused_naming_the_option(capsys, tmp_path, argv, message):
    # the data directory does not exist: the refusal must come before any loading
    code, out, err = run(capsys, "train", "--data-dir", tmp_path / "none", "--no-download",
                         "--quiet", *argv)
    assert code == 2 and err == f"xpnet: error: {message}\n"
    assert "learning rate" not in err.replace("--lr", "")


def test_a_negative_seed_names_seed(capsys, tmp_path):
    for command in ("train", "search"):
        code, _, err = run(capsys, command, "--data-dir", tmp_path / "none", "--seed", "-1")
        assert code == 2 and "--seed must be a non-negative integer, got -1" in err


def test_an_explicit_data_dir_without_the_files_is_an_error(capsys, tmp_path, monkeypatch,
                                                            data_dir):
    monkeypatch.setenv("XPNET_DATA", str(data_dir.parent))  # another copy it must not use
    (data_dir.parent / "mnist").mkdir(exist_ok=True)
    for f in data_dir.iterdir():
        target = data_dir.parent / "mnist" / f.name
        if not target.exists():
            target.symlink_to(f)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "train-images-idx3-ubyte.gz").write_bytes(
        (data_dir / "train-images-idx3-ubyte.gz").read_bytes())
    for where, what in ((tmp_path / "missing", "directory does not exist"),
                        (partial, "missing train-labels-idx1-ubyte.gz")):
        code, _, err = run(capsys, "train", "--data-dir", where, "--quiet", "--epochs", "1")
        assert code == 2 and f"not in data_dir {where}: {what}" in err


def _unwritable_dir(tmp_path):
    """A directory this process cannot create files in (root ignores permissions: then a
    kernel file system that refuses new files), or None."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    for candidate in (d, Path("/sys")):
        try:
            (candidate / ".probe").touch()
        except OSError:
            return candidate
        (candidate / ".probe").unlink()
    return None


def test_out_that_is_a_file_or_unwritable_fails_before_training(capsys, data_dir, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    code, out, err = run(capsys, *train_args(data_dir, "--epochs", "1", "--out", a_file))
    assert code == 2 and f"--out {a_file} is a file" in err and "epoch" not in out
    ro = _unwritable_dir(tmp_path)
    if ro is None:
        pytest.skip("no unwritable directory on this machine")
    code, out, err = run(capsys, *train_args(data_dir, "--epochs", "1", "--out", ro))
    assert code == 2 and f"--out {ro} is not a writable directory" in err
    assert "epoch" not in out
