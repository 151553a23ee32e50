"""Export PyTorch classifiers as validated ONNX versions in a Triton model repository.

CLI: ``python -m export --help``. API: :func:`export.pipeline.export_and_publish`;
repository helpers (versions, atomic publish) in :mod:`export.repository`; config.pbtxt in
:mod:`export.triton_config`. torch/onnx load only when those modules are imported.
"""
