"""The Python-based `onnxruntime` Triton backend (model.py) and its pure helpers (core.py)."""
