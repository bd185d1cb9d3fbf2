"""The package's import graph has no circle and no source file is oversized
(`tools/source_layout.py`); the checks are shown able to fail."""

import importlib.util
import pathlib

TOOL = pathlib.Path(__file__).resolve().parents[1] / "tools" / "source_layout.py"
spec = importlib.util.spec_from_file_location("source_layout", TOOL)
assert spec is not None and spec.loader is not None
layout = importlib.util.module_from_spec(spec)
spec.loader.exec_module(layout)


def test_no_import_circle():
    graph = layout.import_graph(layout.modules())
    assert "jaxlayer._layer" in graph and graph["jaxlayer._layer"], "the graph was not read"
    assert layout.circles(graph) == []


def test_no_source_file_over_the_limit():
    assert layout.long_files(layout.modules()) == []


def test_layer_module_is_build_and_call_only():
    lines = len(layout.modules()["jaxlayer._layer"].read_text().splitlines())
    assert lines <= 400


def test_circle_detection_can_fail(tmp_path):
    package = tmp_path / "jaxlayer"
    package.mkdir()
    (package / "__init__.py").write_text("from . import a\n")
    (package / "a.py").write_text("def f():\n    from .b import g\n")  # a lazy import counts
    (package / "b.py").write_text("from .a import f\n")
    graph = layout.import_graph(layout.modules(tmp_path))
    assert layout.circles(graph) == [["jaxlayer.a", "jaxlayer.b", "jaxlayer.a"]]
