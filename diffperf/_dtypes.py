"""Static table of numeric formats: storage bytes and which tensor-core peak they run on.

A format name is static (it selects code paths and a peak-FLOP/s field); the byte counts it
implies enter arithmetic as Python floats, which is fine because they are properties of the
format, not swept quantities.

Scale overheads: ``fp8_block`` stores one fp32 scale per 128x128 weight block and per 1x128
activation group (DeepSeek-V3 tech report, sec. 3.3): 4/16384 + ... ≈ 0.03 extra bytes per
activation element, negligible for weights. ``nvfp4`` stores an fp8 (E4M3) scale per 16
elements: 0.5 + 1/16 = 0.5625 bytes/element (NVIDIA Blackwell NVFP4 description).
``w4a16_mxfp4`` stores 4-bit weights with an 8-bit scale per 32 (OCP MX spec): 0.53125 B.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    name: str
    bytes_per_element: float
    compute: str  # which peak: "fp32" | "bf16" | "fp8" | "fp4" | "int8"
    weight_only: bool = False  # weights stored in this format, math in bf16


FORMATS: dict[str, Format] = {
    "fp32": Format("fp32", 4.0, "fp32"),
    "bf16": Format("bf16", 2.0, "bf16"),
    "fp16": Format("fp16", 2.0, "bf16"),
    "fp8": Format("fp8", 1.0, "fp8"),
    "fp8_block": Format("fp8_block", 1.0 + 4.0 / 128.0, "fp8"),
    "int8": Format("int8", 1.0, "int8"),
    "int8_wo": Format("int8_wo", 1.0, "bf16", weight_only=True),
    "fp4": Format("fp4", 0.5625, "fp4"),
    "nvfp4": Format("nvfp4", 0.5625, "fp4"),
    "mxfp4": Format("mxfp4", 0.53125, "fp4"),
    "w4a16_mxfp4": Format("w4a16_mxfp4", 0.53125, "bf16", weight_only=True),
}


def get_format(name: str, field: str = "dtype") -> Format:
    """Look up a numeric format by name; a clear ``ValueError`` names the field otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(
            f"{field}={name!r} is not a known numeric format; choose one of "
            f"{', '.join(sorted(FORMATS))}"
        ) from None


def activation_bytes(name: str) -> float:
    """Bytes per activation element flowing between kernels in this format.

    Weight-only formats keep bf16 activations; fp4 formats quantise activations to fp4 with
    scales; fp8 formats to one byte (+ block scales).
    """
    f = get_format(name)
    if f.weight_only:
        return 2.0
    return f.bytes_per_element
