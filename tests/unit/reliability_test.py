"""tests/reliability.py: faults added by the tests end up as rows of the reliability table."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests import reliability


def test_an_added_fault_is_a_row_of_the_rendered_table(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEDANA_FIGURES_DIR", str(tmp_path))
    assert reliability.figures_dir() == tmp_path
    assert reliability.render() == "no figures recorded yet\n"
    reliability.add_fault("x", 2, 1, 0)
    assert (tmp_path / "faults.json").exists()
    lines = reliability.render().splitlines()
    assert lines[0] == "| fault | injected | workloads lost | partial listed as complete |"
    assert "| x | 2 | 1 | 0 |" in lines
    assert "| **all** | **2** | **1** | **0** |" in lines
    assert reliability.render(tmp_path) == reliability.render()
