"""What ``pip install`` puts on the path and what ``import xpnet`` loads."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _loaded_modules(code: str) -> list[str]:
    """The names in sys.modules after running ``code`` in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True, text=True, check=True, cwd=REPO / "tests",
    ).stdout
    return out.split()


def test_the_kernels_install_as_xpnet_kernels_and_nothing_as_kernels():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "xpnet.kernels" in setuptools["packages"]
    assert setuptools["package-dir"]["xpnet.kernels"] == "kernels"  # the folder stays on top
    assert not any(p.split(".")[0] == "kernels" for p in setuptools["packages"])


def test_the_library_imports_its_kernels_as_a_subpackage():
    loaded = _loaded_modules("import xpnet.models, xpnet.kernels.cpu, xpnet.kernels.generic")
    assert "xpnet.kernels" in loaded
    assert not [m for m in loaded if m.split(".")[0] == "kernels"]


def test_the_command_line_loads_only_the_arguments_of_the_benchmark_report():
    loaded = _loaded_modules("import xpnet.cli\nxpnet.cli.build_parser()")
    assert {m for m in loaded if m.startswith("xpnet.bench")} == {"xpnet.bench", "xpnet.bench.cli"}


def test_every_module_imports_first_in_a_fresh_interpreter():
    """A user may import any module before the others (``from xpnet.blocks import
    ResidualBlock``, as its docstring invites): no import cycle may depend on the order.
    Each module is imported on its own, after every xpnet module is forgotten."""
    code = """
import importlib, pkgutil, sys, traceback
import xpnet
names = sorted(m.name for m in pkgutil.walk_packages(xpnet.__path__, "xpnet.")
               if not m.name.endswith("__main__"))
failed = []
for name in names:
    for loaded in [m for m in sys.modules if m == "xpnet" or m.startswith("xpnet.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc(limit=1).strip().splitlines()[-1])
print(len(names))
print("\\n".join(failed))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO / "tests").stdout.splitlines()
    assert int(out[0]) > 30  # the walk found the package's modules
    failed = [line for line in out[1:] if line]
    assert not failed, "\n".join(failed)
