"""Export PyTorch classifiers as validated ONNX versions in a Triton model repository.

CLI: ``python -m export --help``. API: :func:`export.pipeline.export_and_publish`;
repository helpers (versions, atomic publish) in :mod:`export.repository`; config.pbtxt in
:mod:`export.triton_config`; int8 quantization in :mod:`export.quant_step` (measurement:
``python -m export.quant_report``). torch/onnx load only when those modules are imported.
"""
