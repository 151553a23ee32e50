"""Defaults of the --quantize int8 flags, free of heavy imports (keeps --help instant)."""

DEFAULT_CALIBRATION_COUNT = 200
DEFAULT_VALIDATION_COUNT = 200
DEFAULT_MIN_AGREEMENT = 0.9
# Below this many photos a held-out split would be too small to say anything: validate on all.
MIN_IMAGES_FOR_SPLIT = 40
