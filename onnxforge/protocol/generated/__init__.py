"""Python code generated from ``protos/inference.proto``; do not edit by hand.

Regenerate with ``python scripts/generate_protos.py``; ``--check`` (run by the tests)
fails when these files drift from the .proto file.
"""
