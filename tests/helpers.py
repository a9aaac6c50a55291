"""Small builders of test data shared across test modules."""

from __future__ import annotations

from typing import Any


def mlp_document(**overrides: Any) -> dict[str, Any]:
    """A small valid spec document to start tests from."""
    document: dict[str, Any] = {
        "name": "tiny",
        "input": {"name": "x", "shape": [4]},
        "output": {"name": "y"},
        "layers": [
            {"type": "dense", "units": 3, "activation": "relu"},
            {"type": "dense", "units": 2, "activation": "softmax"},
        ],
    }
    document.update(overrides)
    return document
