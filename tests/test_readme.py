"""The README's commands run as written, and the README reads as a first read should.

Every command in a ```bash block of README.md and of the documents in docs/ is accounted
for here:
- `xpnet ...` training and search commands, and the `mpiexec ... xpnet train --distributed`
  one, are run as written in a scratch directory;
- the chapter examples are run by tests/test_examples.py (quick mode); here we check that the
  README names each of them and that each exists;
- the quick start and the test command are run by CI (.ci/run), which this test reads;
  the README's first Python snippet and its "own arrays" one are run as written;
- commands that need a GPU run only where one is present (they are skipped otherwise);
- the benchmark suite's quick run and the report command are run as written (the report on
  the committed `benchmarks/results/cpu.json`);
- `pip install` and `apt-get` lines inside the guide install what CI's `pip install -e '.[dev]'`
  installs.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xpnet.backend import gpu_available

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))


def bash_commands(documents=(README, *DOCS)) -> list[str]:
    """Every command line of the ```bash blocks of ``documents`` (comments stripped)."""
    text = "\n".join(path.read_text(encoding="utf-8") for path in documents)
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def needs_gpu(command: str) -> bool:
    return "--device gpu" in command or "[gpu" in command or "gpu_check" in command


QUICK_START = bash_commands()[0]
XPNET_COMMANDS = [c for c in bash_commands() if c.startswith("xpnet ") and not needs_gpu(c)]
MPI_COMMANDS = [c for c in bash_commands() if c.startswith("mpiexec ") and not needs_gpu(c)]


CI = REPO / ".ci" / "run"


def ci_commands() -> list[str]:
    """The command lines of .ci/run (comments, blank lines and shell settings left out)."""
    lines = [line.strip() for line in CI.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith(("#", "set ", "export "))]


def test_the_quick_start_and_the_test_command_are_what_ci_runs():
    assert bash_commands()[1] == "pytest -q"
    steps = [step.strip() for step in QUICK_START.split("&&")]
    # a virtual environment, not the system Python (PEP 668 refuses that on Debian/Ubuntu)
    assert steps[:4] == ["apt-get update", "apt-get install -y python3-venv dataset-fashion-mnist",
                         "python3 -m venv .venv", ". .venv/bin/activate"]
    assert steps[4] == "pip install -e '.[dev]'"
    assert steps[-1].startswith("xpnet train")
    ci = ci_commands()
    assert not any("not slow" in line for line in ci)  # CI runs the end-to-end tests too
    # CI runs every step as written, in the README's order, with the system packages behind
    # a check that they are not there yet
    assert "apt-get update && apt-get install -y python3-venv dataset-fashion-mnist" in ci
    assert " && ".join(steps[2:5]) in ci
    assert ci.index(" && ".join(steps[2:5])) < ci.index(steps[-1])
    # then the README's test command, last, so that its summary line ends CI's output
    assert ci[-1] == "pytest -q"
    assert not any("python3 -m pip" in line or "pip install --user" in line for line in ci)


def test_the_readme_says_what_the_quick_start_and_the_tests_cost():
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert "git clone" in text and "cd xpnet" in text
    assert re.search(r"about [\d,]+ tests .* in about \d+ minutes on 2 cores", text)
    assert "same shell" in text


def test_the_readme_is_a_first_read():
    """The tour comes first; GPU, MPI and benchmark figures live in docs/."""
    text = README.read_text(encoding="utf-8")
    headings = re.findall(r"(?m)^## (.*)$", text)
    assert headings[0].startswith("What xpnet is") and headings[1] == "Quick start"
    for figure in ("H200", "GB/s", "GFLOP/s", "images/s", "ms/step"):
        assert figure not in text, f"README states {figure!r} figures: they belong in docs/"
    for doc in ("docs/gpu.md", "docs/distributed.md", "docs/benchmarks.md"):
        assert f"]({doc})" in text and (REPO / doc).is_file()


def python_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["first", "own arrays"])
def test_python_snippet_runs_offline_as_written(which, tmp_path, fashion_dir):
    snippets = python_snippets()
    code = snippets[0] if which == "first" else next(s for s in snippets if "default_rng" in s)
    env = dict(os.environ, XPNET_DATA=str(tmp_path / "empty"),  # no cached MNIST to lean on
               MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    accuracy = float(done.stdout.rsplit(":", 1)[1])
    assert accuracy > 0.5


def test_every_example_named_in_the_readme_exists_and_is_tested():
    named = {Path(shlex.split(c)[1]).name for c in bash_commands() if c.startswith("python ex")}
    on_disk = {p.name for p in (REPO / "examples").glob("ch*.py")}
    assert named == on_disk
    tested = (REPO / "tests" / "test_examples.py").read_text(encoding="utf-8")
    assert "glob(" in tested or all(name in tested for name in named)


@pytest.mark.slow
@pytest.mark.parametrize("command", XPNET_COMMANDS, ids=lambda c: " ".join(c.split()[:4]))
def test_xpnet_command_runs_as_written(command, tmp_path, fashion_dir):
    env = dict(os.environ, MPLBACKEND="Agg")
    args = [sys.executable, "-m", "xpnet", *shlex.split(command)[1:]]
    if "--resume" in command:  # the resume example continues the run the line before it made
        earlier = XPNET_COMMANDS[XPNET_COMMANDS.index(command) - 1]
        first = [sys.executable, "-m", "xpnet", *shlex.split(earlier)[1:]]
        subprocess.run(first, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=600)
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out_dir = tmp_path / shlex.split(command)[shlex.split(command).index("--out") + 1]
    assert any(out_dir.iterdir()), f"{command} wrote nothing to {out_dir}"


BENCH_COMMANDS = [c for c in bash_commands() if "benchmarks/" in c and not needs_gpu(c)]


def test_the_readme_shows_the_benchmark_commands():
    assert any("pytest benchmarks/ --quick" in c for c in BENCH_COMMANDS)
    assert any(c.startswith("python -m xpnet.bench ") for c in BENCH_COMMANDS)


@pytest.mark.slow
@pytest.mark.parametrize("command", BENCH_COMMANDS, ids=lambda c: " ".join(c.split()[:6]))
def test_benchmark_command_runs_as_written(command, tmp_path):
    """Run from the repository, the variables the command unsets unset, outputs in tmp_path."""
    pytest.importorskip("pytest_benchmark")
    args = shlex.split(command)
    env = dict(os.environ, MPLBACKEND="Agg")
    while args[0] == "env":  # env -u VAR [-u VAR ...] CMD
        while len(args) > 2 and args[1] == "-u":
            env.pop(args[2], None)
            args = [args[0], *args[3:]]
        args = args[1:]
    if args[0] == "pytest":
        # a benchmark run of its own even when this suite runs under pytest-xdist, which
        # would otherwise switch pytest-benchmark off in the child as well
        env = {k: v for k, v in env.items() if not k.startswith("PYTEST_XDIST")}
        args = [sys.executable, "-m", "pytest", *args[1:], "-p", "no:cacheprovider",
                "-p", "no:xdist"]
    elif args[0] == "python":
        args = [sys.executable, *args[1:]]
    outputs = ("bench.json", "bench.md", "report.md")
    args = [str(tmp_path / a) if a in outputs else a for a in args]
    for name in outputs:
        args = [a.replace(f"={name}", f"={tmp_path / name}") for a in args]
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    written = list(tmp_path.glob("*.md"))
    assert written and all(p.stat().st_size > 0 for p in written)


@pytest.mark.slow
@pytest.mark.mpi
@pytest.mark.parametrize("command", MPI_COMMANDS)
def test_mpi_command_runs_as_written(command, tmp_path, fashion_dir):
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None or importlib.util.find_spec("mpi4py") is None:
        pytest.skip("needs mpiexec and mpi4py (pip install -e '.[distributed]')")
    args = shlex.split(command)
    at = args.index("xpnet")
    args = [mpiexec, *args[1:at], sys.executable, "-m", "xpnet", *args[at + 1 :]]
    env = dict(os.environ, MPLBACKEND="Agg", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")  # Open MPI as root; MPICH ignores them
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "data-parallel over 2 processes" in done.stdout + done.stderr
    assert (tmp_path / "runs" / "ddp" / "params.npz").exists()


@pytest.mark.skipif(not gpu_available(), reason="needs a CUDA GPU with CuPy")
@pytest.mark.parametrize("command", [c for c in bash_commands() if needs_gpu(c)])
def test_gpu_command_runs_as_written(command, tmp_path, fashion_dir):
    if command.startswith("pip "):
        pytest.skip("installing is left to the person at the GPU machine")
    args = shlex.split(command)
    if args[0] == "xpnet":
        args = [sys.executable, "-m", "xpnet", *args[1:]]
    elif args[0] == "bash":
        args = ["bash", str(REPO / args[1]), str(tmp_path / "gpu_check")]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
