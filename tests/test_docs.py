"""The documentation's Python examples run, and every public name has an API page.

The pages are docs/**/*.md with their `--8<--` snippet lines expanded (as
pymdownx.snippets expands them for the site), so README.md's example, which
the plain-JAX guide includes, runs here as part of that page. Each page's
```python blocks run in page order in one namespace, as a reader would run
them; each block is checked against what its comments say (CHECKS), or
asserts its results itself (a block with no CHECKS entry must have
`assert`s). Not run (the rule tests/test_readme.py had): fragments, i.e.
blocks containing `...`, and blocks using `keras.distribution`, which need
8 devices (tests/test_distribution.py covers them).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxlayer
from conftest import BACKEND

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()
SNIPPET = re.compile(r'^--8<-- "([^"]+)"[ \t]*$', re.M)
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _section(text: str, name: str) -> str:
    start = re.search(rf"^.*--8<-- \[start:{re.escape(name)}\].*\n", text, re.M)
    end = re.search(rf"^.*--8<-- \[end:{re.escape(name)}\].*$", text, re.M)
    assert start and end, f"snippet section `{name}` not found"
    return text[start.end() : end.start()]


def expand_snippets(text: str) -> str:
    """`--8<-- "path"`, `"path:section"` and `"path:start:end"` (lines), paths from the root."""

    def include(match: re.Match) -> str:
        path, *rest = match.group(1).split(":")
        content = (ROOT / path).read_text()
        if len(rest) == 1:
            content = _section(content, rest[0])
        elif len(rest) == 2:
            lines = content.splitlines()
            start, end = int(rest[0] or 1), int(rest[1] or len(lines))
            content = "\n".join(lines[start - 1 : end])
        return expand_snippets(content.rstrip("\n"))

    return SNIPPET.sub(include, text)


pytestmark = pytest.mark.skipif(BACKEND != "jax", reason="the documentation is checked once, on the jax backend")

PAGES = {
    str(path.relative_to(DOCS)): expand_snippets(path.read_text()) for path in sorted(DOCS.rglob("*.md"))
}
BLOCKS = {page: PYTHON_BLOCK.findall(text) for page, text in PAGES.items()}


def _runnable(block: str) -> bool:
    # Fragments with `...` and the distribution example (it needs 8 devices,
    # covered by tests/test_distribution.py) are not standalone programs.
    return "..." not in block and "keras.distribution" not in block


RUNNABLE = [(page, i) for page, blocks in BLOCKS.items() for i, block in enumerate(blocks) if _runnable(block)]


def _np(x):
    return np.asarray(x)


def _names(layer):
    return sorted(v.name for v in layer.weights)


def _dropout_follows_the_flag(layer, x):
    """Inference is deterministic; training calls draw fresh masks."""
    np.testing.assert_array_equal(_np(layer(x)), _np(layer(x)))
    assert not np.array_equal(_np(layer(x, training=True)), _np(layer(x, training=True)))


def check_two_functions(ns):
    layer, model = ns["model"].layers[0], ns["model"]
    x = np.random.RandomState(1).rand(4, 64).astype("float32")
    # "called at build time, with placeholders of the input's shapes"
    assert {v.name: tuple(v.shape) for v in layer.weights} == {
        "dense.kernel": (64, 64),
        "dense.bias": (64,),
        "out.kernel": (64, 10),
        "out.bias": (10,),
    }
    assert int(model.optimizer.iterations) == 16  # fit ran: 256 / 32 batches x 2 epochs
    # "rng: a fresh key per training call, None in inference"
    _dropout_follows_the_flag(layer, x)
    expected = ns["call_fn"](layer.get_params(), None, x, False)
    np.testing.assert_allclose(_np(layer(x)), _np(expected), rtol=1e-5, atol=1e-5)


def check_get_params(ns):
    layer, params = ns["model"].layers[0], ns["params"]
    # "the params PyTree, as JAX arrays"
    assert jax.tree.structure(params) == jax.tree.structure(
        {"dense": {"bias": 0, "kernel": 0}, "out": {"bias": 0, "kernel": 0}}
    )
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(params))
    assert ns["state"] is None  # this model has no state
    for a, b in zip(jax.tree.leaves(layer.get_params()), jax.tree.leaves(params)):
        np.testing.assert_array_equal(_np(a), _np(b))
    # "checks structure, shapes, dtypes; all or nothing"
    bad = {**params, "out": {"kernel": params["out"]["kernel"] * 0, "bias": np.zeros(3, "float32")}}
    with pytest.raises(ValueError, match=r"shape"):
        layer.set_params(bad)
    np.testing.assert_array_equal(_np(layer.get_params()["out"]["kernel"]), _np(params["out"]["kernel"]))


def check_portable(ns):
    # The block asserts the loaded class and equal predictions itself;
    # "fine-tunes": its weights moved from the saved ones.
    loaded = ns["loaded"].layers[0]
    assert not np.allclose(_np(loaded.get_params()["w"]), np.eye(3, dtype="float32"))
    np.testing.assert_array_equal(_np(ns["model"].layers[0].get_params()["w"]), np.eye(3))


def check_other_signatures(ns):
    # Both inputs are ones and both weights ones: every output is 32 + 32,
    # scaled by 1 / 0.9 where dropout kept it and 0 where it dropped it.
    outputs = _np(ns["outputs"])
    assert outputs.shape == (4, 10)
    assert set(np.unique(outputs).tolist()) <= {0.0, np.float32(64 / 0.9).item()}
    assert (outputs != 0).any()
    inputs = (np.ones((4, 32), "float32"), np.ones((4, 32), "float32"))
    np.testing.assert_array_equal(_np(ns["layer"](inputs)), np.full((4, 10), 64.0))


def check_haiku(ns):
    # "detects the transform kind": hk.transform (no state), rng for dropout
    layer = ns["layer"]
    assert _names(layer) == ["linear.b", "linear.w", "linear_1.b", "linear_1.w"]
    assert layer.get_state() is None
    _dropout_follows_the_flag(layer, np.ones((4, 64), "float32"))


def check_flax(ns):
    # '"params" trainable; batch_stats non-trainable, updated in training'
    layer, x = ns["layer"], np.random.RandomState(0).rand(4, 64).astype("float32")
    assert all(v.name.startswith("params.") for v in layer.trainable_weights)
    assert sorted(v.name for v in layer.non_trainable_weights) == [
        "batch_stats.BatchNorm_0.mean",
        "batch_stats.BatchNorm_0.var",
    ]
    before = _np(layer.get_state()["batch_stats"]["BatchNorm_0"]["mean"])
    layer(x)
    np.testing.assert_array_equal(_np(layer.get_state()["batch_stats"]["BatchNorm_0"]["mean"]), before)
    layer(x, training=True)
    assert not np.allclose(_np(layer.get_state()["batch_stats"]["BatchNorm_0"]["mean"]), before)


def check_nnx(ns):
    # "Keras's training flag switches train/eval mode": dropout only in training
    layer = ns["layer"]
    assert [n for n in _names(layer) if not n.startswith("drop.")] == [
        "hidden.bias",
        "hidden.kernel",
        "out.bias",
        "out.kernel",
    ]
    _dropout_follows_the_flag(layer, np.ones((4, 64), "float32"))


def check_equinox(ns):
    import equinox as eqx

    # "the eqx.Module with the trained values"
    layer, trained = ns["layer"], ns["trained"]
    assert isinstance(trained, eqx.nn.MLP)
    x = np.random.RandomState(0).rand(4, 64).astype("float32")
    np.testing.assert_allclose(_np(layer(x)), _np(jax.vmap(trained)(x)), rtol=1e-5, atol=1e-6)
    assert _names(layer) == sorted(f"layers.{i}.{p}" for i in range(3) for p in ("weight", "bias"))


# Each runnable block, found by a line of its own, and the check of what its
# comments say it shows.
CHECKS = {
    "def init_fn(rng, inputs):": check_two_functions,
    "params = model.layers[0].get_params()": check_get_params,
    "loaded = keras.models.load_model(path)": check_portable,
    "def my_model(params, rngs, x1, x2, deterministic):": check_other_signatures,
    "layer = HaikuLayer(hk.transform(forward), seed=0)": check_haiku,
    "layer = FlaxLayer(MLP())": check_flax,
    "layer = NnxLayer(MLP(nnx.Rngs(0)), seed=0)": check_nnx,
    "trained = layer.get_model()": check_equinox,
}


def _checks_itself(namespace: dict) -> None:
    """For a block whose own `assert`s check what its comments say."""


def _check_for(page: str, block: str):
    found = [check for marker, check in CHECKS.items() if marker in block]
    if not found and re.search(r"^\s*assert ", block, re.M):
        return _checks_itself
    assert len(found) == 1, f"no single check in tests/test_docs.py for the block of docs/{page}:\n{block}"
    return found[0]


# page -> (index of the last block run, the page's namespace after it)
_namespaces: dict[str, tuple[int, dict]] = {}


def _run(page: str, index: int, namespace: dict) -> None:
    block = BLOCKS[page][index]
    exec(compile(block, f"docs/{page}[{index}]", "exec"), namespace)


def _namespace_before(page: str, index: int) -> dict:
    """The page's namespace after its runnable blocks before `index` (rerun if not cached)."""
    earlier = [i for p, i in RUNNABLE if p == page and i < index]
    cached = _namespaces.get(page)
    if not earlier:
        return {}
    if cached and cached[0] == earlier[-1]:
        return cached[1]
    namespace: dict = {}
    for i in earlier:
        _run(page, i, namespace)
    return namespace


@pytest.mark.parametrize(("page", "index"), RUNNABLE, ids=[f"{p}[{i}]" for p, i in RUNNABLE])
def test_docs_example_runs(page, index):
    block = BLOCKS[page][index]
    check = _check_for(page, block)
    for module in re.findall(r"^import (haiku|flax|equinox)", block, flags=re.M):
        pytest.importorskip(module)
    namespace = _namespace_before(page, index)
    _run(page, index, namespace)
    if re.search(r"^layer = ", block, re.M) and "layer(" not in block:
        out = namespace["layer"](np.ones((4, 64), "float32"))
        assert tuple(out.shape) == (4, 10)
        assert namespace["layer"].count_params() > 0
    check(namespace)
    _namespaces[page] = (index, namespace)


def test_the_docs_have_runnable_examples_with_checks():
    # Guards the collection itself: the pages the examples moved to are found
    # and every marker of CHECKS is in some runnable block.
    runnable = [BLOCKS[p][i] for p, i in RUNNABLE]
    assert {"frameworks/jax.md", "saving.md", "frameworks/haiku.md"} <= {p for p, _ in RUNNABLE}
    for marker in CHECKS:
        assert sum(marker in block for block in runnable) == 1, f"no single runnable block has `{marker}`"


def test_readme_examples_are_in_the_docs():
    # README.md's blocks run as part of the pages that include them.
    blocks = PYTHON_BLOCK.findall(README)
    assert blocks, "README.md has no ```python example"
    for block in blocks:
        assert any(block in page_blocks for page_blocks in BLOCKS.values()), (
            f"this README.md block is included by no docs page, so it is not run:\n{block}"
        )


def test_snippet_expansion_matches_the_site_rules():
    # The README sections the site includes exist, and an expanded page has
    # no snippet line left.
    for name in ["commands", "intro", "example", "features"]:
        assert _section(README, name).strip()
    assert not any(SNIPPET.search(text) for text in PAGES.values())
    assert "| Backends | jax, tensorflow |" in PAGES["index.md"]


def _api_target(name: str) -> str:
    text = (DOCS / "api" / f"{name}.md").read_text()
    targets = re.findall(r"^::: (jaxlayer\.[\w.]+)\s*$", text, re.M)
    assert len(targets) == 1, f"docs/api/{name}.md must have one `::: jaxlayer....` line"
    return targets[0]


def _resolve(path: str):
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


PUBLIC = [name for name in jaxlayer.__all__ if not name.startswith("__")]
PYTREE_PROTOCOL = {"tree_flatten", "tree_flatten_with_keys", "tree_unflatten"}


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_has_an_api_page_with_docstrings(name):
    assert (DOCS / "api" / f"{name}.md").exists(), f"jaxlayer.{name} has no page docs/api/{name}.md"
    obj = getattr(jaxlayer, name)
    assert _resolve(_api_target(name)) is obj, f"docs/api/{name}.md renders another object"
    assert (obj.__doc__ or "").strip(), f"jaxlayer.{name} has no docstring"
    if not inspect.isclass(obj):
        return
    # Public methods and properties defined by the class itself, other than
    # overrides of a base class's (Keras's `call`, `build`, ...) and JAX's
    # PyTree protocol, need a docstring: mkdocstrings hides members without one.
    for member, value in vars(obj).items():
        if member.startswith("_") or member in PYTREE_PROTOCOL:
            continue
        if any(hasattr(base, member) for base in obj.__mro__[1:]):
            continue
        if callable(value) or isinstance(value, (property, classmethod, staticmethod)):
            doc = inspect.getdoc(getattr(obj, member, None) if not isinstance(value, property) else value)
            assert (doc or "").strip(), f"jaxlayer.{name}.{member} is public but has no docstring"


def test_the_build_hook_reads_the_same_public_names():
    # docs/_hooks.py reads __all__ without importing jaxlayer; it must agree.
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "_hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    assert hooks.public_names() == PUBLIC
    assert sorted(p.stem for p in (DOCS / "api").glob("*.md")) == sorted(PUBLIC)


def test_nav_lists_every_page():
    # mkdocs warns (strict: fails) about pages missing from nav; this names them early.
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in PAGES:
        assert f" {page}\n" in nav, f"docs/{page} is not in mkdocs.yml's nav"


def test_documented_portable_format_version_is_the_codes():
    from jaxlayer._portable_programs import PORTABLE_FORMAT_VERSION, check_versions

    assert f"It is **{PORTABLE_FORMAT_VERSION}**" in PAGES["saving.md"]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    version = jaxlayer.__version__
    assert f"| {version} | {PORTABLE_FORMAT_VERSION} |" in changelog
    assert f"## {version}" in changelog
    # "A jaxlayer that reads another format version refuses the file ... naming both versions"
    with pytest.raises(ValueError, match=rf"format version {PORTABLE_FORMAT_VERSION + 1}.*reads version {PORTABLE_FORMAT_VERSION}"):
        check_versions({"format_version": PORTABLE_FORMAT_VERSION + 1})


def test_tables_live_in_one_place():
    # The feature, backend, export and troubleshooting tables are written
    # once: in README.md (and included by the pages) or in one page.
    sources = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "benchmarks" / "RESULTS.md", *sorted(DOCS.rglob("*.md"))]
    seen: dict[str, str] = {}
    for source in sources:
        rows = {line for line in source.read_text().splitlines() if line.startswith("| ") and len(line) > 30}
        for row in rows:
            where = str(source.relative_to(ROOT))
            assert row not in seen, f"this table row is in both {seen[row]} and {where}:\n{row}"
            seen[row] = where


def test_readme_links_resolve():
    # README.md links into docs/ (GitHub renders those pages); each target exists.
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"
