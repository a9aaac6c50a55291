"""Response headers onnxforge adds to the protocol's answers (ModelMetadata), by name.

A server sends them beside the standard message; other clients ignore them.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ACCURACY", "SPEC_SHA256", "VARIANT"]

VARIANT: Final = "x-onnxforge-variant"
"""The model version's variant: ``fp32``, ``fp16``, ``int8-dynamic``, ``int8-static``."""
ACCURACY: Final = "x-onnxforge-accuracy"
"""The accuracy recorded when the variant was built, as a JSON object (when recorded)."""
SPEC_SHA256: Final = "x-onnxforge-spec-sha256"
"""The SHA-256 of the spec the version's file was built from (when recorded)."""
