"""Defaults of the --quantize int8 flags, free of heavy imports (keeps --help instant)."""

DEFAULT_CALIBRATION_COUNT = 200
DEFAULT_VALIDATION_COUNT = 200
DEFAULT_MIN_AGREEMENT = 0.9
# The --calibration-method choices (onnxruntime.quantization.CalibrationMethod members).
CALIBRATION_METHOD_NAMES = ("minmax", "entropy", "percentile")
# int8 exists to be faster: by default it is published only if it is at least as fast as fp32
# on the exporting machine (on AVX2-only CPUs EfficientNet-Lite0's int8 is slower, see README).
DEFAULT_MIN_SPEEDUP = 1.0
# Below this many photos a held-out split would be too small to say anything: validate on all.
MIN_IMAGES_FOR_SPLIT = 40
