"""`benchmarks.run --check` turns a missed target into a failing exit status."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from conftest import BACKEND

if BACKEND != "jax":
    pytest.skip("the benchmarks run on the jax backend", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).parent.parent))

from benchmarks import run  # noqa: E402
from benchmarks.timing import Row  # noqa: E402


@pytest.mark.parametrize("ratio, check, status", [(1.5, True, 1), (0.9, True, 0), (1.5, False, 0)])
def test_check_exits_nonzero_only_on_a_miss(monkeypatch, tmp_path, capsys, ratio, check, status):
    fake = types.SimpleNamespace(run=lambda args: [Row("fit", "layer", 0.01, "pure", ratio, 1.1)])
    monkeypatch.setattr(run.importlib, "import_module", lambda name: fake)
    argv = ["--only", "fit", "--out", str(tmp_path)] + (["--check"] if check else [])
    assert run.main(argv) == status
    if status:
        assert "1 missed target(s)" in capsys.readouterr().err
