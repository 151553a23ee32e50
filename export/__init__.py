"""Export PyTorch classifiers as validated ONNX versions in a Triton model repository.

CLI: ``python -m export --help``. API: :func:`export.pipeline.export_and_publish` (options
checked once, in :func:`export.pipeline.check_options`); where a model comes from in
:mod:`export.sources`; repository helpers (versions, atomic publish) in :mod:`export.repository`;
int8 quantization in :mod:`export.quant_step` (measurement: ``python -m export.quant_report``).
What is published (files, config.pbtxt, labels, preprocessing) is :mod:`model_contract`'s.
torch/onnx load only when those modules are imported.
"""
