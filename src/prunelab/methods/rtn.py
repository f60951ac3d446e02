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
                                    check_group_size, quantize_rtn)


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
        from prunelab import arch

        for name, layer in arch.named_prunable_layers(model).items():
            check_group_fits(self.config.group_size, arch.weight_matrix(layer).shape[1], name)


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
