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
