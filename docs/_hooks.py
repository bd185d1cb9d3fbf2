"""mkdocs hooks: files that live outside docs/, and the API-page check.

The benchmark plot stays in benchmarks/ (one source): it is added to the site
here, next to the performance page that includes benchmarks/RESULTS.md.
Every public name of `jaxlayer` (its `__all__`, read with `ast`, so nothing is
imported) must have a page api/<name>.md rendering it with mkdocstrings, and a
docstring; a missing page or docstring stops the build with a PluginError.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
EXTRA_FILES = {"scaling.png": ROOT / "benchmarks" / "scaling.png"}
API_DIRECTIVE = re.compile(r"^::: (jaxlayer\.[\w.]+)\s*$", re.M)


def public_names() -> list[str]:
    """`jaxlayer.__all__` without dunder names, read without importing jaxlayer.

    `__all__` is a list of strings and starred module-level tuples of strings
    (`*_ADAPTERS`); tests/test_docs.py checks this reading against the import.
    """
    tree = ast.parse((ROOT / "src" / "jaxlayer" / "__init__.py").read_text())
    literals = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            literals[node.targets[0].id] = node.value
    names = []
    for element in getattr(literals.get("__all__"), "elts", []):
        if isinstance(element, ast.Starred) and isinstance(element.value, ast.Name):
            names += ast.literal_eval(literals[element.value.id])
        else:
            names.append(ast.literal_eval(element))
    return [name for name in names if not name.startswith("__")]


def on_files(files, config):
    for uri, path in EXTRA_FILES.items():
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    names = public_names()
    problems = [] if names else ["found no `__all__` in src/jaxlayer/__init__.py"]
    for name in names:
        page = files.get_file_from_path(f"api/{name}.md")
        if page is None:
            problems.append(f"public name `jaxlayer.{name}` has no API page: add docs/api/{name}.md")
            continue
        targets = API_DIRECTIVE.findall(Path(page.abs_src_path).read_text())
        if len(targets) != 1 or targets[0].rsplit(".", 1)[-1] != name:
            problems.append(f"docs/api/{name}.md must render `{name}` with one `::: jaxlayer....{name}` line")
        elif not _docstring(targets[0]):
            problems.append(f"`{targets[0]}` has no docstring: its API page would be empty")
    if problems:
        raise PluginError("API reference incomplete:\n  " + "\n  ".join(problems))
    return files


@functools.cache
def _package():
    import griffe

    return griffe.load("jaxlayer", search_paths=[str(ROOT / "src")], resolve_aliases=False)


def _docstring(path: str) -> str:
    """The docstring of `jaxlayer....` object `path`, found statically by griffe."""
    import griffe

    package = _package()
    try:
        target = package[path.split(".", 1)[1]]
        return (target.docstring.value if target.docstring else "").strip()
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return ""
