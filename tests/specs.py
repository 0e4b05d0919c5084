"""Job-spec helpers shared by the tests."""

from __future__ import annotations

from typing import Any


def override(spec: dict[str, Any], **over: Any) -> dict[str, Any]:
    """Set dotted paths of ``spec`` in place (``override(s, **{"training.epochs": 2})``), creating dicts on the way; returns ``spec``."""
    for path, value in over.items():
        node, keys = spec, path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return spec
