"""What ``xpnet``'s help says, the names it accepts, and the messages of a run a newcomer
reads: the default dataset, unseeded runs, ``--device cuda``, the resume line, and the
warning for a loss that explodes without reaching NaN."""

import warnings

import pytest
from test_cli import run, train_args, write_idx

from xpnet import cli
from xpnet.loss_growth import LossGrowthCheck, LossGrowthWarning


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_idx(tmp_path_factory.mktemp("idx"))


def help_of(capsys, command):
    """The help of ``xpnet command`` on one line (argparse wraps lines)."""
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def option_help(capsys, command, option, next_option):
    """The help text of ``option`` (the usage lines left out)."""
    options = help_of(capsys, command).split("options:", 1)[1]
    return options.split(option, 1)[1].split(next_option, 1)[0]


def test_search_help_prints_percent_signs_once(capsys):
    text = help_of(capsys, "search")
    assert "80% of the training samples" in text and "other 20%." in text
    assert "%%" not in text


def test_search_hidden_help_names_only_the_models_search_takes(capsys):
    hidden = option_help(capsys, "search", "--hidden SIZES", "--activation")
    assert "default 100,100,100,100,100,100" in hidden
    for other in ("TwoLayerNet", "SimpleConvNet", "DeepConvNet"):
        assert other not in hidden


def test_train_hidden_help_names_every_models_default(capsys):
    hidden = option_help(capsys, "train", "--hidden SIZES", "--activation")
    assert "TwoLayerNet: 50" in hidden and "SimpleConvNet: 100" in hidden
    assert "DeepConvNet: 50" in hidden and "100,100,100,100,100" in hidden


def test_seed_help_says_an_unseeded_run_is_not_repeatable(capsys):
    seed = option_help(capsys, "train", "--seed SEED", "--device")
    assert "default: none" in seed and "not repeatable" in seed


@pytest.mark.parametrize("command", ["train", "search"])
def test_the_default_dataset_is_the_one_the_quick_start_installs(capsys, command):
    text = help_of(capsys, command)
    assert "fashion-mnist (default; works offline" in text
    assert "apt-get install dataset-fashion-mnist" in text
    assert cli.build_parser().parse_args([command]).dataset == "fashion-mnist"


@pytest.mark.parametrize("spelling", ["cuda", "CUDA", "gpu"])
def test_device_cuda_is_taken_as_gpu(spelling):
    assert cli.build_parser().parse_args(["train", "--device", spelling]).device == "gpu"


def test_an_unknown_device_lists_the_choices(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--device", "tpu"])
    assert "choose from 'cpu', 'gpu'" in capsys.readouterr().err


def test_resume_counts_epochs_as_the_epoch_lines_do(capsys, data_dir, tmp_path):
    # 300 samples, batch 100: 3 steps an epoch
    ck = ("--checkpoint-dir", tmp_path / "ck")
    code, out, err = run(capsys, *train_args(data_dir, "--epochs", 1, *ck))
    assert code == 0, err
    assert "=== epoch:1/1" in out
    code, out, err = run(capsys, *train_args(data_dir, "--epochs", 2, *ck, "--resume"))
    assert code == 0, err
    assert "after epoch 1/2, step 3 of 6" in out
    assert "=== epoch:2/2" in out


def test_a_loss_exploding_without_nan_warns_once(capsys, data_dir):
    code, out, err = run(capsys, *train_args(data_dir, "--optimizer", "SGD", "--lr", 10,
                                             "--epochs", 3, "--batch-size", 30))
    assert code == 0, err
    assert err.count("xpnet: warning: the training loss grew from") == 1, err
    assert "Try a lower learning rate (now 10)" in err


def test_a_loss_that_falls_does_not_warn(capsys, data_dir):
    code, out, err = run(capsys, *train_args(data_dir, "--epochs", 2, "--batch-size", 30))
    assert code == 0, err
    assert "warning" not in err


def test_loss_growth_check_warns_once_above_its_factor():
    check = LossGrowthCheck(factor=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step, loss in enumerate([2.3, 1.9, 5.0, 22.9], start=1):  # up, but not 10x
            assert not check.check(loss, step)
    with pytest.warns(LossGrowthWarning, match=r"from 2\.3 at the first step to 142 at step 5"):
        assert check.check(142.0, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not check.check(500.0, 6)  # once
