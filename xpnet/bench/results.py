"""Reading a pytest-benchmark JSON: one :class:`Case` per benchmark, grouped as the run grouped
them, and the speed-up of each case over its group's baseline.

A case's meaning comes from the ``extra_info`` the suite records (``kind``, ``impl``,
``dtype``, ``device``, ``batch``, ``flops``, ``baseline``, ``label``); any other
pytest-benchmark JSON reads too, with labels taken from the test ids and the slowest case of
each group as its baseline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Case", "ReportError", "baseline_of", "find", "group_cases", "load_cases", "load_json",
    "speedups",
]


class ReportError(ValueError):
    """The input is not a pytest-benchmark JSON the report can use."""


@dataclass
class Case:
    """One benchmark of the run: its group, label, timing statistics and extra_info."""

    name: str
    group: str
    label: str
    median: float  # seconds
    iqr: float
    rounds: int
    extra: dict = field(default_factory=dict)

    @property
    def baseline(self) -> bool:
        """Whether the suite marked this case as its group's baseline."""
        return bool(self.extra.get("baseline"))

    def get(self, key, default=None):
        """One entry of the case's extra_info."""
        return self.extra.get(key, default)

    @property
    def gflops(self) -> float | None:
        """Achieved GFLOP/s from the FLOP count the suite recorded, if any."""
        flops = self.extra.get("flops")
        return flops / self.median / 1e9 if flops and self.median > 0 else None

    def matches(self, **want) -> bool:
        """Whether every ``key=value`` of ``want`` is in the case's extra_info."""
        return all(self.extra.get(k) == v for k, v in want.items())


def _label_from_name(name: str) -> str:
    """``test_x[a-b]`` -> ``a-b``; a name without parameters stays as it is."""
    return name[name.index("[") + 1 : -1] if "[" in name and name.endswith("]") else name


def load_json(path) -> dict:
    """The pytest-benchmark JSON at ``path``; ReportError, saying how to write one, when it is
    missing, not JSON, or holds no benchmarks."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(
            f"{path} does not exist; write it with `pytest benchmarks/ --benchmark-json={path}`"
        ) from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not JSON ({exc}); expected a pytest-benchmark JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ReportError(
            f"{path} is not a pytest-benchmark JSON (no 'benchmarks' list); write one with "
            "`pytest benchmarks/ --benchmark-json=FILE`"
        )
    if not data["benchmarks"]:
        raise ReportError(f"{path} holds no benchmarks (were they all skipped or deselected?)")
    return data


def load_cases(data: dict) -> list[Case]:
    """One Case per entry of ``data["benchmarks"]``, in the run's order; ReportError for an
    entry without ``stats.median``."""
    cases = []
    for b in data["benchmarks"]:
        try:
            stats, name = b["stats"], b["name"]
            median = float(stats["median"])
        except (KeyError, TypeError, ValueError):
            raise ReportError(
                f"benchmark entry {b.get('name', b)!r} has no stats.median; expected a "
                "pytest-benchmark JSON"
            ) from None
        extra = dict(b.get("extra_info") or {})
        cases.append(
            Case(
                name=name,
                group=b.get("group") or extra.get("group") or "(no group)",
                label=extra.get("label") or _label_from_name(name),
                median=median,
                iqr=float(stats.get("iqr", 0.0)),
                rounds=int(stats.get("rounds", 0)),
                extra=extra,
            )
        )
    return cases


def group_cases(cases: list[Case]) -> dict[str, list[Case]]:
    """Cases by group, groups in the order of the run, each sorted fastest first."""
    groups: dict[str, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.group, []).append(case)
    return {g: sorted(cs, key=lambda c: c.median) for g, cs in groups.items()}


def baseline_of(group: list[Case]) -> Case:
    """The case marked as the group's baseline, else the slowest."""
    marked = [c for c in group if c.baseline]
    return marked[0] if marked else max(group, key=lambda c: c.median)


def speedups(group: list[Case]) -> dict[str, float]:
    """label -> baseline median / case median (how many times faster than the baseline)."""
    base = baseline_of(group)
    return {c.label: base.median / c.median for c in group if c.median > 0}


def find(cases, **want) -> Case | None:
    """The first case whose extra_info has every ``key=value`` of ``want``, else None."""
    for case in cases:
        if case.matches(**want):
            return case
    return None
