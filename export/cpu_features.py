"""This machine's CPU as int8 inference sees it: the model name, the SIMD flags that pick ONNX
Runtime's int8 kernels, and what those kernels do with a u8 x s8 product.

Why it matters: on x86 without VNNI, ONNX Runtime's U8S8 GEMM kernels multiply with
VPMADDUBSW, which adds two u8 x s8 products into a *16-bit* intermediate that saturates once
|a0*w0 + a1*w1| > 32767. Full-range int8 weights (-128..127) with u8 activations (0..255) reach
65280, so the same int8 model gives other answers on an AVX2-only CPU than on a VNNI one, where
VPDPBUSD accumulates in 32 bits. With 7-bit weights (reduce_range, -64..64) the sum stays within
255*64*2 = 32640 and every x86 path computes the same integers.
Read from /proc/cpuinfo (what `lscpu` shows), torch-free.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
# The flags that decide which int8 GEMM kernel ONNX Runtime's MLAS dispatches to on x86.
INT8_RELEVANT_FLAGS = (
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
)
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
# The largest |a0*w0 + a1*w1| a VPMADDUBSW lane holds without saturating.
INT16_MAX = 32767
U8_MAX = 255


@dataclass(frozen=True)
class CpuFeatures:
    """A CPU's model name and its int8-relevant flags."""

    model: str
    flags: frozenset[str]

    @property
    def has_vnni(self) -> bool:
        """True when u8 x s8 products accumulate in 32 bits (VNNI or AMX): no saturation."""
        return bool(self.flags & VNNI_FLAGS)

    @property
    def int8_kernels(self) -> str:
        """Which int8 multiply ONNX Runtime uses here, in words."""
        if "amx_int8" in self.flags:
            return "AMX/VNNI (32-bit accumulation)"
        if self.has_vnni:
            return "VNNI VPDPBUSD (32-bit accumulation)"
        if "avx512bw" in self.flags:
            return "AVX-512BW VPMADDUBSW (16-bit intermediate, saturates full-range weights)"
        if "avx2" in self.flags:
            return "AVX2 VPMADDUBSW (16-bit intermediate, saturates full-range weights)"
        return "no AVX2: generic kernels"

    def describe(self) -> str:
        """One line: model; flags; int8 kernels."""
        flags = " ".join(flag for flag in INT8_RELEVANT_FLAGS if flag in self.flags) or "none"
        return f"{self.model}; flags: {flags}; int8 kernels: {self.int8_kernels}"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (export.json, reports)."""
        return {
            "model": self.model,
            "flags": [flag for flag in INT8_RELEVANT_FLAGS if flag in self.flags],
            "vnni": self.has_vnni,
            "int8_kernels": self.int8_kernels,
        }


def parse_cpuinfo(text: str) -> CpuFeatures:
    """CpuFeatures from the text of /proc/cpuinfo (its first processor)."""
    model = ""
    flags: frozenset[str] = frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split()) & frozenset(INT8_RELEVANT_FLAGS)
    return CpuFeatures(model or platform.processor() or platform.machine() or "unknown", flags)


def read_cpu_features(cpuinfo: Path = CPUINFO) -> CpuFeatures:
    """This machine's CpuFeatures (model 'unknown' and no flags where /proc/cpuinfo is absent)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text)


def max_pair_sum(weight_limit: int) -> int:
    """The largest |a0*w0 + a1*w1| for u8 activations and weights within ±weight_limit."""
    return 2 * U8_MAX * weight_limit


def saturates_without_vnni(weight_limit: int) -> bool:
    """True when weights reaching ±weight_limit can overflow VPMADDUBSW's 16-bit intermediate."""
    return max_pair_sum(weight_limit) > INT16_MAX
