"""The version of onnxforge, in a module that imports nothing (setuptools reads it)."""

__version__ = "0.1.0"
