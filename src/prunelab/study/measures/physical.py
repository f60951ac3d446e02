"""The physical account of each compressed model (dense included), recipe `physical_account:`:
bytes of its weights stored dense and compact (prunelab.compact), whole model and prunable
matrices alone, computed from the model in memory (nothing is written)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from prunelab.study.measures import Measure, register_measure


class PhysicalAccount(BaseModel):
    """Bytes on disk dense and compact, in one value dtype."""

    model_config = ConfigDict(extra="forbid")
    values: Literal["fp32", "bf16", "fp16"] = "bf16"
    layout: Literal["prunelab", "compressed-tensors"] = "prunelab"


@register_measure
class PhysicalAccountMeasure(Measure):
    name = "physical_account"
    recipe_field = "physical_account"
    section = PhysicalAccount  # its report section: prunelab/report/physical.py

    def run(self, backend, handle, config, work=None) -> dict:
        from prunelab.compact import model_account

        return model_account(handle.loaded.model, values=config.values, layout=config.layout)

    def fake(self, backend, handle, config, work=None) -> dict:
        point = getattr(handle, "point", None)
        sparsity = (point.first.get("sparsity") or 0.0) if point else 0.0
        width = {"fp32": 4, "bf16": 2, "fp16": 2}[config.values]
        prunable = 1000 * width
        packed = prunable if sparsity == 0 else int(1000 * (1 - sparsity) * width + 1000 / 8)
        return {"values": config.values, "layout": config.layout, "pattern": None,
                "dense_bytes": prunable + 200 * width, "compact_bytes": packed + 200 * width,
                "prunable_dense_bytes": prunable, "prunable_compact_bytes": packed}

    def cost(self, recipe, config, point, per_token, params, task=None) -> float:
        return 5e-8 * params  # a few passes over the weights, no forward
