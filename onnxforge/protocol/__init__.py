"""The Open Inference Protocol in Python: generated messages and stubs (server and client)."""
