"""Round-to-nearest (RTN) weight quantization: each weight goes to the nearest level of its
group's integer grid (`prunelab.methods.quant`), with no calibration and no error feedback.

The baseline GPTQ is measured against. The model is then evaluated with the dequantized
float32 weights: what an integer kernel computes, up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from prunelab.methods.base import LayerDecision, MethodConfig, PruningMethod, register
from prunelab.methods.quant import (SUPPORTED_BITS, check_bits, check_group_fits,
                                    check_group_size, largest_group_size, quantize_rtn)


@dataclass
class QuantConfig(MethodConfig):
    bits: int = field(default=4, metadata={
        "help": f"bits per weight: one of {', '.join(map(str, SUPPORTED_BITS))}"})
    group_size: int | None = field(default=128, metadata={
        "help": "input columns sharing a scale and zero point (32, 64, 128 or a divisor of "
                "the width); none: one grid per output channel"})
    symmetric: bool = field(default=False, metadata={
        "help": "grid symmetric about zero (no zero point stored); default asymmetric"})

    def validate(self) -> None:
        check_bits(self.bits, "quantization")
        check_group_size(self.group_size, "quantization")


class Quantizer(PruningMethod):
    """What the quantizers share: no N:M patterns, sparsity 0, a group size that fits."""

    supports_nm = False
    quantizes = True

    def check_model(self, model: nn.Module, sparsity=None, pattern=None) -> None:
        for name, width in input_widths(model).items():
            check_group_fits(self.config.group_size, width, name)


def input_widths(model: nn.Module) -> dict[str, int]:
    """Each quantized layer's input width (the columns its groups cut)."""
    from prunelab import arch

    return {name: arch.weight_matrix(layer).shape[1]
            for name, layer in arch.named_prunable_layers(model).items()}


def fitting_group_size(model: nn.Module) -> int | None:
    """The group size used when none is given: the largest of 128, 64, 32 dividing every
    quantized layer's input width (smollm2's 576 takes 64), else per channel (None)."""
    return largest_group_size(input_widths(model).values())


@register
class RTN(Quantizer):
    name = "rtn"
    summary = "round-to-nearest weight quantization, per channel or per group of inputs"
    Config = QuantConfig

    def prune_layer(self, weight, stats, target):
        c = self.config
        quantized = quantize_rtn(weight, c.bits, c.group_size, c.symmetric)
        return LayerDecision(quantized.dequantize(), None, {"bits": c.bits},
                             quantized=quantized)
