"""`jaxlayer inspect FILE.keras`: what a saved model's JaxLayers hold, without building it.

Reads only the archive's `config.json` and the sizes of its files: no layer
is constructed, no user code or framework is imported, no program is run.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from typing import Any

import jax
import numpy as np

from ._config_codec import decode_tree
from ._program import AbstractInput
from ._variables import path_name


def describe_file(path: str) -> dict:
    """The JaxLayers of a `.keras` file as plain data (see `format_description`)."""
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        metadata = json.loads(archive.read("metadata.json")) if "metadata.json" in archive.namelist() else {}
        # Program sizes by content hash: the config records each program's SHA-256.
        sizes = {
            hashlib.sha256(archive.read(info.filename)).hexdigest(): info.file_size
            for info in archive.infolist()
            if info.filename.endswith(".jaxexport")
        }
    layers = [_describe_layer(record, sizes) for record in _jaxlayer_records(config)]
    return {"path": str(path), "keras_version": metadata.get("keras_version"), "layers": layers}


def _jaxlayer_records(node: Any):
    """Every serialized layer record whose class is one of jaxlayer's."""
    if isinstance(node, dict):
        registered = str(node.get("registered_name") or "")
        if registered.startswith("jaxlayer>") and isinstance(node.get("config"), dict):
            yield node
            return
        for value in node.values():
            yield from _jaxlayer_records(value)
    elif isinstance(node, list):
        for value in node:
            yield from _jaxlayer_records(value)


def _describe_layer(record: dict, sizes: dict) -> dict:
    config = record["config"]
    portable = config.get("portable")
    layer = {
        "name": config.get("name"),
        "class": record.get("class_name"),
        "form": "portable" if portable else "source",
        "params": _tree_rows(config.get("params_spec")),
        "state": _tree_rows(config.get("state_spec")),
    }
    if portable:
        digests = portable.get("sha256", {}).values()
        layer.update(
            {
                "saved_from": portable.get("class_name"),
                "jax_version": portable.get("jax_version"),
                "calling_convention_version": portable.get("calling_convention_version"),
                "platforms": portable.get("platforms"),
                "inputs": _shapes(portable.get("inputs")),
                "outputs": {
                    flag: _shapes(record_["outputs"]) for flag, record_ in portable["flags"].items()
                },
                "programs": len(portable.get("sha256", {})),
                "program_bytes": sum(sizes.get(digest, 0) for digest in digests),
                "programs_found": sum(digest in sizes for digest in digests),
            }
        )
    else:
        call_fn = config.get("call_fn")
        layer["code"] = (
            call_fn.get("config") if isinstance(call_fn, dict) else None
        ) or _registered_model(config)
        build = record.get("build_config", {}).get("input_shape")
        layer["inputs"] = str(build) if build is not None else None
    return layer


def _registered_model(config: dict) -> str | None:
    for key in ("module", "model", "function"):
        value = config.get(key)
        if isinstance(value, dict):
            return value.get("registered_name") or value.get("config")
    return None


def _abstract(shape: tuple, dtype: Any) -> AbstractInput:
    return AbstractInput(shape, dtype)


def _tree_rows(spec: Any) -> list[dict] | None:
    if spec is None:
        return None
    tree = decode_tree(spec, make_array=_abstract)
    rows = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, AbstractInput):
            rows.append({"path": path_name(path, "root"), "shape": list(leaf.shape), "dtype": leaf.dtype.name})
    return rows


def _shapes(record: Any) -> list[str]:
    tree = decode_tree(record, make_array=_abstract)
    return [_text(leaf) for leaf in jax.tree.leaves(tree) if isinstance(leaf, AbstractInput)]


def _text(leaf: AbstractInput) -> str:
    dims = ", ".join("?" if d is None else str(d) for d in leaf.shape)
    return f"{leaf.dtype.name}[{dims}]"


def format_description(description: dict) -> str:
    """`describe_file`'s result as the text `jaxlayer inspect` prints."""
    lines = [f"{description['path']} (saved by keras {description['keras_version']})"]
    if not description["layers"]:
        lines.append("  no JaxLayer in this file")
    for layer in description["layers"]:
        lines.append("")
        lines.append(f"layer `{layer['name']}` ({layer['class']}): {layer['form']}")
        if layer["form"] == "portable":
            missing = layer["programs"] - layer["programs_found"]
            lines.append(
                f"  {layer['programs']} jax.export programs, {layer['program_bytes']:,} bytes, "
                f"saved from a {layer['saved_from']}"
                + (f" ({missing} MISSING from the archive)" if missing else "")
            )
            low = jax.export.minimum_supported_calling_convention_version
            high = jax.export.maximum_supported_calling_convention_version
            version = layer["calling_convention_version"]
            verdict = "readable" if low <= version <= high else "NOT readable"
            lines.append(
                f"  saved with jax {layer['jax_version']} (calling convention {version}); "
                f"jax {jax.__version__} reads {low}..{high}: {verdict}"
            )
            lines.append(f"  platforms: {', '.join(layer['platforms'])}")
            lines.append(f"  inputs: {', '.join(layer['inputs'])}")
            for flag, outputs in layer["outputs"].items():
                lines.append(f"  outputs ({flag}): {', '.join(outputs)}")
        else:
            lines.append(f"  code: {layer['code']} (loading imports it)")
            if layer["inputs"]:
                lines.append(f"  built for input shape {layer['inputs']}")
        for part in ("params", "state"):
            rows = layer[part]
            if rows is None:
                lines.append(f"  {part}: layout kept by the registered model class")
                continue
            count = sum(int(np.prod(row["shape"])) for row in rows)
            lines.append(f"  {part}: {len(rows)} arrays, {count:,} values")
            width = max((len(row["path"]) for row in rows), default=0)
            for row in rows:
                dims = ", ".join(str(d) for d in row["shape"])
                lines.append(f"    {row['path']:<{width}}  {row['dtype']}[{dims}]")
    if description["layers"]:
        lines.append("")
        lines.append(
            "load it with `import jaxlayer` first, then `keras.models.load_model(path)`: "
            "without the import Keras cannot locate the layer classes"
        )
    return "\n".join(lines)
