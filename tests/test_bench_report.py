"""The benchmark report (xpnet.bench) on a small synthetic pytest-benchmark JSON."""

import json

import pytest

from xpnet.bench.analysis import headline, scaling_series, scaling_summary
from xpnet.bench.cli import main
from xpnet.bench.gpu import gpu_table
from xpnet.bench.markdown import render_markdown
from xpnet.bench.report import write_report
from xpnet.bench.results import ReportError, group_cases, load_cases, speedups

PEAK_N = 1000  # a 1000^3 sgemm: 2e9 FLOP


def _entry(name, group, median, **extra):
    return {
        "name": name,
        "group": group,
        "stats": {"median": median, "iqr": median / 10, "rounds": 5, "min": median},
        "extra_info": extra,
    }


def _scaling(kind, value, median, impl="xpnet"):
    batch = value if kind == "batch" else 8
    image = 28 if kind == "batch" else value
    return _entry(
        f"test_scaling_{kind}[{value}-{impl}]", f"scaling {kind}", median,
        kind=f"scaling-{kind}", impl=impl, device="cpu", dtype="float32", batch=batch,
        image=image, label=f"{impl} {kind}={value}", flops=1e6 * batch,
        activation_bytes=4 * batch * 16 * image * image * 4,
    )


def synthetic_run():
    deep = dict(kind="train-step", model="DeepConvNet", batch=100, flops=4e9)
    infer = dict(kind="inference", model="DeepConvNet", batch=100, impl="xpnet", device="cpu")
    acc = dict(kind="accuracy", model="DeepConvNet", impl="xpnet", device="cpu", images=500)
    benchmarks = [
        _entry("test_train_step[book]", "train DeepConvNet", 2.0, label="book float64",
               baseline=True, impl="book", dtype="float64", device="cpu", blas_threads=2,
               **deep),
        _entry("test_train_step[xpnet]", "train DeepConvNet", 0.2, label="xpnet float32",
               impl="xpnet", dtype="float32", device="cpu", blas_threads=1, **deep),
        _entry("test_train_step[torch]", "train DeepConvNet", 0.25, label="PyTorch float32",
               impl="torch", dtype="float32", device="cpu", **deep),
        _entry("test_gemm[numpy-f32]", "GEMM peak", 0.025, label="NumPy float32",
               kind="gemm-peak", impl="numpy", dtype="float32", device="cpu", n=PEAK_N,
               flops=2 * PEAK_N**3),
        _entry("test_infer[f32]", "inference DeepConvNet", 0.05, label="xpnet float32",
               dtype="float32", **infer),
        _entry("test_infer[f16]", "inference DeepConvNet", 0.08, label="xpnet float16",
               dtype="float16", **infer),
        _entry("test_acc[f32]", "accuracy", 0.3, label="xpnet float32", dtype="float32",
               accuracy=0.976, **acc),
        _entry("test_acc[f16]", "accuracy", 0.5, label="xpnet float16", dtype="float16",
               accuracy=0.974, **acc),
        # time per sample: 1 ms, 0.5 ms, 0.41 ms, 0.4 ms, then 0.6 ms at 1024
        _scaling("batch", 1, 1e-3),
        _scaling("batch", 8, 4e-3),
        _scaling("batch", 64, 0.41e-3 * 64),
        _scaling("batch", 256, 0.4e-3 * 256),
        _scaling("batch", 1024, 0.6e-3 * 1024),
        # per pixel: flat
        _scaling("image", 28, 8 * 1e-6 * 28**2),
        _scaling("image", 56, 8 * 1e-6 * 56**2),
        # a group from a benchmark without the suite's extra_info
        _entry("test_other[slow]", "other", 3.0),
        _entry("test_other[fast]", "other", 1.0),
    ]
    machine = {
        "system": "Linux",
        "release": "6.1",
        "python_version": "3.11.7",
        "xpnet": {
            "mode": "quick",
            "cpu": "Test CPU",
            "cpus_usable": 2,
            "cpu_caches": {"L1d": "48K", "L2": "2048K"},
            "python": "3.11.7",
            "versions": {"numpy": "2.4.6", "numba": "0.68.1", "cupy": None},
            "blas": [{"user_api": "blas", "internal_api": "openblas", "version": "0.3.31",
                      "architecture": "SkylakeX", "num_threads": 2,
                      "threading_layer": "pthreads", "owner": "numpy"}],
            "threads": {"xpnet kernels": 2, "numpy BLAS (outside the kernels)": 1,
                        "numba_threading_layer": "omp"},
            "env": {"OPENBLAS_CORETYPE": None, "OMP_NUM_THREADS": "2"},
            "gpu": {"available": False, "reason": "no CuPy"},
            "load_average_start": [0.5, 0.4, 0.3],
            "load_average_end": [1.5, 0.9, 0.4],
            "command": "pytest benchmarks/ --quick",
        },
    }
    return {"machine_info": machine, "commit_info": {"id": "0123456789abcdef"},
            "datetime": "2026-01-01T00:00:00", "benchmarks": benchmarks}


@pytest.fixture
def run_json(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(synthetic_run()))
    return path


def test_headline_figures():
    h = headline(load_cases(synthetic_run()))
    assert h["naive_over_xpnet"] == pytest.approx(10.0)
    assert h["xpnet_over_torch"] == pytest.approx(0.8)
    assert h["gflops"] == pytest.approx(4e9 / 0.2 / 1e9)  # 20 GFLOP/s
    assert h["peak_gflops"] == pytest.approx(2e9 / 0.025 / 1e9)  # 80 GFLOP/s
    assert h["peak_fraction"] == pytest.approx(0.25)
    cpu = h["inference_cpu"]
    assert cpu["f16_over_f32"] == pytest.approx(1.6)
    assert cpu["accuracy"] == {"float32": (0.976, 500), "float16": (0.974, 500)}
    assert h["xpnet_gpu"] is None and h["gpu_over_cpu"] is None  # no GPU cases in the run


def test_speedups_use_the_marked_baseline_else_the_slowest():
    groups = group_cases(load_cases(synthetic_run()))
    train = speedups(groups["train DeepConvNet"])
    assert train == pytest.approx({"xpnet float32": 10.0, "PyTorch float32": 8.0,
                                   "book float64": 1.0})
    # no extra_info: labels come from the test ids, the slowest case is the baseline
    assert speedups(groups["other"]) == pytest.approx({"fast": 3.0, "slow": 1.0})
    assert [c.label for c in groups["train DeepConvNet"]] == [
        "xpnet float32", "PyTorch float32", "book float64"]  # fastest first


def test_batch_scaling_sentence_finds_the_knee_and_the_rise():
    cases = load_cases(synthetic_run())
    series = scaling_series(cases, "batch")
    assert list(series) == ["xpnet"]
    assert [x for x, _ in series["xpnet"]] == [1, 8, 64, 256, 1024]
    text = scaling_summary(series["xpnet"], "batch", {"L2": "2048K"})
    assert "from batch 64 on" in text  # 0.41 ms is within 10% of the best 0.4 ms
    assert "batch 256" in text  # where the best is
    assert "At batch 1024 it is 50% above its best" in text
    assert "L2 cache 2.1 MB per core" in text  # 2048K from sysfs, in decimal megabytes
    image = scaling_summary(scaling_series(cases, "image")["xpnet"], "image")
    assert "proportional to the number of pixels" in image
    assert "4× the pixels" in image


def test_markdown_report_shows_figures_and_machine(run_json):
    text = render_markdown(json.loads(run_json.read_text()), source="bench.json")
    assert "do not edit by hand" in text
    assert "**10×**" in text  # book / xpnet
    assert "**0.8**" in text  # xpnet / PyTorch
    assert "**25.0%**" in text  # of the GEMM peak
    assert "kernel **SkylakeX**, threads: 2 at the end of the run (pthreads)" in text
    assert "2 for the kernels; NumPy's BLAS 1 outside them" in text
    assert ("BLAS threads during the cases | the book's NumPy code: 2, xpnet (outside its "
            "kernels): 1" in text)
    assert "`OPENBLAS_CORETYPE`=unset" in text and "`OMP_NUM_THREADS`=2" in text
    assert "97.40% on 500 images" in text and "-0.20 points" in text
    assert "float16 takes 1.6× the float32 time" in text
    assert "### other" in text and "| fast | 1 s |" in text
    assert "Time per sample against batch size" in text
    assert "`pytest benchmarks/ --quick`" in text


def test_write_report_with_charts(run_json, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "report" / "RESULTS.md"
    assert main([str(run_json), "-o", str(out), "--charts-dir",
                 str(tmp_path / "report" / "img")]) == 0
    text = out.read_text()
    for name in ("speedups.png", "scaling.png"):
        png = tmp_path / "report" / "img" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](img/{name})" in text  # linked relative to the report


def test_write_report_without_charts(run_json, tmp_path):
    out = tmp_path / "R.md"
    assert main([str(run_json), "-o", str(out), "--no-charts"]) == 0
    assert ".png" not in out.read_text()
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("{not json", "is not JSON"),
    ('{"machine_info": {}}', "no 'benchmarks' list"),
    ('{"benchmarks": []}', "holds no benchmarks"),
    ('{"benchmarks": [{"name": "x", "stats": {}}]}', "has no stats.median"),
])
def test_bad_input_is_one_clear_error(tmp_path, capsys, content, message):
    path = tmp_path / "bench.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ReportError, match=message):
        write_report(path, tmp_path / "R.md", charts=False)
    assert main([str(path), "-o", str(tmp_path / "R.md")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "R.md").exists()


def test_batch_scaling_still_falling_and_flat_from_the_start():
    falling = [(b, load_cases({"benchmarks": [_scaling("batch", b, t)]})[0])
               for b, t in ((1, 1e-3), (4, 2e-3), (16, 4e-3))]
    text = scaling_summary(falling, "batch")
    assert "still falling" in text and "at batch 16" in text
    flat = [(b, load_cases({"benchmarks": [_scaling("batch", b, 1e-3 * b)]})[0])
            for b in (1, 4, 16)]
    assert "already at batch 1" in scaling_summary(flat, "batch")


def test_xpnet_bench_subcommand(run_json, tmp_path, capsys):
    from xpnet import cli

    out = tmp_path / "R.md"
    assert cli.main(["bench", str(run_json), "-o", str(out), "--no-charts"]) == 0
    assert "**10×**" in out.read_text()
    assert cli.main(["bench", str(tmp_path / "missing.json"), "-o", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def _gpu_results():
    return {
        "env": {"gpu": "NVIDIA H200", "compute_capability": "9.0", "cupy": "14.2.0",
                "numba_cuda": "0.30.4", "torch": "2.11.0"},
        "tests": {"gpu": "44 passed in 58.7s", "rest": "614 passed, 35 skipped in 70.1s"},
        "parity": {"grad_max_rel": 5.3e-7, "sgd_max_rel": 5.2e-7, "adam_max_rel": 3.3e-4,
                   "adam_cpu_vs_float64_max_rel": 3.1e-4, "adam_gpu_vs_float64_max_rel": 2e-5,
                   "passed": True},
        "epoch": {"steps": 600, "batch": 100, "seconds": 12.0, "ms_per_step": 20.0},
        "torch": {"fp32": {"seconds": 2.4, "ms_per_step": 4.0}},
        "cpu": {"steps_timed": 20, "ms_per_step": 72.0, "epoch_seconds_extrapolated": 43.2},
        "train": {"epochs": 10, "epoch_seconds": [8.0, 9.0, 8.5], "final_test_acc": 0.9039,
                  "note": "from an earlier run"},
        "kernels": {"rows": [{"shape": "pool1", "maxpool_forward_ms": 0.19,
                              "maxpool_backward_ms": 0.21}],
                    "im2col_call_overhead_us": 142.0},
        "notes": ["launch-bound at batch 100"],
    }


def test_report_with_a_gpu_section(run_json, tmp_path):
    gpu = tmp_path / "gpu.json"
    gpu.write_text(json.dumps(_gpu_results()))
    out = tmp_path / "R.md"
    assert main([str(run_json), "-o", str(out), "--no-charts", "--gpu-results",
                 str(gpu)]) == 0
    text = out.read_text()
    section = text[text.index("## On an NVIDIA GPU"):]
    assert f"--gpu-results {gpu.as_posix()}" in text  # the regeneration command names it
    assert "| GPU tests (pytest -m gpu) | 44 passed in 58.7s |" in section
    assert "gradients 5.3e-07, after SGD 5.2e-07, after Adam 3.3e-04" in section
    assert ": pass |" in section
    assert "| xpnet GPU epoch (600 steps, batch 100) | 12.00 s (20.00 ms/step) |" in section
    assert "2.40 s (4.00 ms/step), xpnet/torch 5.00x" in section
    assert "43.2 s (72.0 ms/step), GPU speed-up 3.6x" in section
    assert "8.5 s per epoch (median), final test accuracy 0.9039" in section
    assert "max-pool fwd 0.190 ms, bwd 0.210 ms" in section and "| 142 us |" in section
    assert "- launch-bound at batch 100" in section
    assert "- The real-data training row is from an earlier run." in section


def test_gpu_section_shows_failed_and_skipped_parts():
    results = {"parity": {"error": "RuntimeError: no kernel"},
               "torch": {"skipped": "PyTorch is not installed"},
               "epoch": {"steps": 600, "batch": 100, "seconds": 12.0, "ms_per_step": 20.0}}
    rows = gpu_table(results)
    assert "| parity | ERROR: RuntimeError: no kernel |" in rows
    assert "| PyTorch CUDA epoch | skipped: PyTorch is not installed |" in rows
    assert not any("GPU speed-up" in r for r in rows)  # no CPU part: no ratio invented


def test_gpu_section_shows_the_representative_cnns_beside_pytorch():
    results = {"cnns": {"batch": 100, "rows": [
        {"model": "ResNet",
         "xpnet": {"ms_per_step": 12.0, "cuda_graphs": {"used": False,
                                                        "reason": "layer ResidualBlock has no "
                                                                  "graph-safe GPU path"}},
         "torch_fp32": {"ms_per_step": 8.0},
         "parity": {"grad_max_rel": 3e-3, "grad_float32_noise_max_rel": 2e-2,
                    "adam_max_rel": 1e-3, "passed": True}},
        {"model": "LeNet", "xpnet": {"ms_per_step": 1.5, "cuda_graphs": {"used": True}},
         "torch_fp32": {"skipped": "PyTorch is not installed"},
         "parity": {"error": "RuntimeError: boom"}},
    ]}}
    rows = gpu_table(results)
    resnet = next(r for r in rows if r.startswith("| ResNet training step, batch 100 |"))
    assert "xpnet 12.00 ms/step; PyTorch fp32 8.00 ms/step; xpnet/PyTorch 1.50x" in resnet
    assert "eager steps (layer ResidualBlock has no graph-safe GPU path)" in resnet
    assert "gradients 3.0e-03 (the CPU's own move under a one-ulp nudge of x: 2.0e-02)" in resnet
    assert resnet.endswith("after Adam 1.0e-03: pass |")
    lenet = next(r for r in rows if r.startswith("| LeNet training step"))
    assert "PyTorch fp32 PyTorch is not installed" in lenet and "/PyTorch" not in lenet
    assert "CUDA graphs" in lenet and "parity ERROR: RuntimeError: boom" in lenet


def test_gpu_results_that_are_not_json_are_one_clear_error(run_json, tmp_path):
    gpu = tmp_path / "gpu.json"
    gpu.write_text("not json")
    with pytest.raises(ReportError, match="not a GPU check's results.json"):
        write_report(run_json, tmp_path / "R.md", charts=False, gpu_results=gpu)


def _side_by_side(before=False):
    rows = [{"case": "DeepConvNet train step, batch 8", "dtype": "float32",
             "xpnet": 17.0, "torch": 15.0},
            {"case": "SimpleConvNet inference, batch 1", "dtype": "float32",
             "xpnet": 0.7, "torch": 0.9, "naive": 7.0},
            {"case": "DeepConvNet inference, batch 100, float16", "dtype": "float16",
             "xpnet": 40.0, "xpnet float32": 32.0}]
    if before:
        for row, ms in zip(rows, (21.0, 0.8, 110.0)):
            row["before"] = ms
        rows[2]["before float32"] = 44.0
    return {"command": "python benchmarks/bench_cpu_training.py --json s.json",
            "machine": ["CPU: AMD EPYC, 2 logical CPUs"], "blas": ["openblas Haswell"],
            "rows": rows, "accuracy": {"digits": 10000, "float16": 0.9758, "float32": 0.9758},
            "memory": [{"framework": "xpnet", "step_peak_rise_mib": 33.3}]}


def test_report_with_the_side_by_side_table(run_json, tmp_path):
    side = tmp_path / "side.json"
    side.write_text(json.dumps(_side_by_side()))
    out = tmp_path / "R.md"
    assert main([str(run_json), "-o", str(out), "--no-charts", "--side-by-side",
                 str(side)]) == 0
    text = out.read_text()
    section = text[text.index("## xpnet and PyTorch side by side on the CPU"):]
    section = section[:section.index("\n## ", 1)]
    assert f"--side-by-side {side.as_posix()}" in text  # the regeneration command names it
    assert "`python benchmarks/bench_cpu_training.py --json s.json`" in section
    assert "- CPU: AMD EPYC, 2 logical CPUs" in section and "- BLAS: openblas Haswell" in section
    assert "| DeepConvNet train step, batch 8 | 17.00 | 15.00 | **1.13** |" in section
    assert "| SimpleConvNet inference, batch 1 | 0.70 | 0.90 | **0.78** |" in section
    assert "| DeepConvNet inference, batch 100, float16 | 40.00 | 32.00 | **1.25** |" in section
    assert "the book's NumPy code 7 ms, 10.0x xpnet's time" in section
    assert "float16 97.58%, float32 97.58%" in section and "| xpnet | 33.3 |" in section
    assert "before" not in section  # no --before tree in this run


def test_side_by_side_table_with_a_before_tree():
    from xpnet.bench.side_by_side import table_lines

    lines = table_lines(_side_by_side(before=True)["rows"], before=True)
    assert "| DeepConvNet train step, batch 8 | 17.00 | 15.00 | **1.13** | 21.00 | 1.40 |" in lines
    assert "| DeepConvNet inference, batch 100, float16 | 40.00 | 32.00 | **1.25** | 2.50 |" \
        in lines


def test_a_side_by_side_file_without_rows_is_one_clear_error(run_json, tmp_path):
    side = tmp_path / "side.json"
    side.write_text(json.dumps({"machine": []}))
    with pytest.raises(ReportError, match="not a side-by-side results file.*bench_cpu_training"):
        write_report(run_json, tmp_path / "R.md", charts=False, side_by_side=side)
