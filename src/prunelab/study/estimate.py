"""Rough time estimates for a study's dry run and its progress bar.

Every kind prices itself: a method declares its `MethodCost` (`prunelab.methods.base`), a
stage its `cost_terms`, a measure its `cost`; this module holds the shared time model they
scale from and adds them up for one compressed model and its task levels.
"""

from __future__ import annotations

import re

# Seconds per parameter-token of a forward pass on a 2-core CPU; everything scales from it,
# with constants fitted to smollm2-135m's pruning and evaluation times on such a machine.
SECONDS_PER_PARAM_TOKEN = 1.3e-11
# Restoring the dense weights before each compression, magnitude sorting.
COMPRESSION_OVERHEAD_SECONDS = 2.0
# A stage without calibration data sorts every matrix by magnitude.
UNCALIBRATED_SECONDS_PER_MPARAM = 0.06
# Fine-tuning: a step's forward and backward cost about three forwards of its tokens (a
# training example is a prompt and its answer), and AdamW touches every weight's value, grad
# and two moments once per step.
TRAIN_TOKENS_PER_EXAMPLE = 64
TRAIN_FORWARDS_PER_STEP = 3.0
OPTIMIZER_SECONDS_PER_PARAM = 5e-9
DEFAULT_PARAMS = 135e6  # a model the zoo does not list (a local directory)


def model_params(model: str) -> float:
    from prunelab.zoo.models import ZOO

    spec = ZOO.get(model)
    match = re.fullmatch(r"([\d.]+)\s*([MB])", spec.params) if spec else None
    if not match:
        return DEFAULT_PARAMS
    return float(match.group(1)) * (1e6 if match.group(2) == "M" else 1e9)


def method_terms(method: str | None, options: dict, calibration: dict | None,
                 per_token: float, mparams: float) -> list[float]:
    """A pruning or quantizing step's seconds, from its method's declared `MethodCost`: its
    passes over the calibration tokens, plus work that grows with the weights. A wrapping
    method's own passes come on top of its base's (the base does the pruning)."""
    if calibration is None:
        return [UNCALIBRATED_SECONDS_PER_MPARAM * mparams]
    from prunelab.methods.base import MethodCost
    from prunelab.methods.registry import METHODS
    from prunelab.methods.wrapping import WrappingConfig, WrappingMethod

    tokens = calibration["n_samples"] * calibration["seqlen"]
    cls = METHODS.get(method)
    wrapper_passes = 0.0
    if cls is not None and issubclass(cls, WrappingMethod):
        wrapper_passes = cls.cost.passes
        cls = METHODS.get(options.get("base", WrappingConfig().base))
    cost = cls.cost if cls is not None else MethodCost()
    terms = [(wrapper_passes + cost.passes) * tokens * per_token]
    if cost.seconds_per_mparam:
        terms.append(cost.seconds_per_mparam * mparams)
    return terms


def train_step_seconds(batch_size: int, per_token: float, params: float) -> float:
    """One fine-tuning step: forward and backward over the batch, then the AdamW update."""
    return (TRAIN_FORWARDS_PER_STEP * batch_size * TRAIN_TOKENS_PER_EXAMPLE * per_token
            + OPTIMIZER_SECONDS_PER_PARAM * params)


def rough_estimate(recipe, model: str, point, tasks) -> tuple[float, float]:
    """(seconds to build and measure the compressed model, seconds to evaluate `tasks`)."""
    from prunelab.study.measures import compression_measures, point_measure

    params = model_params(model)
    per_token = SECONDS_PER_PARAM_TOKEN * params
    compress = COMPRESSION_OVERHEAD_SECONDS
    for stage, calibration in zip(point.stages, point.calibration):
        for seconds in stage.cost_terms(calibration, per_token, params):
            compress += seconds
    evaluate = 0.0
    for task in tasks:
        measure = point_measure(task)
        evaluate += measure.cost(recipe, measure.config(recipe), point, per_token, params,
                                 task)
    for measure in compression_measures():
        config = measure.config(recipe)
        if config is not None and (measure.on_dense or not point.is_dense):
            compress += measure.cost(recipe, config, point, per_token, params)
    return compress, evaluate


# The share of the planned work after which the ETA follows the measured pace alone.
TRUST_MEASURED_AT = 0.25


def eta_seconds(planned_total: float, planned_done: float, elapsed: float) -> float:
    """Seconds left in a study: the plan's seconds left, scaled by how fast the run goes.

    The pace measured over the first points is mostly noise (the first one also loads the
    model, which the plan does not price), so it is trusted by the share of the planned work
    done: the scale is the measured pace (elapsed / planned done) to the power
    min(1, share / TRUST_MEASURED_AT), a geometric blend from the plan's 1 to the measured
    pace. The ETA starts at the dry run's estimate and follows the run once a quarter is done.
    """
    left = max(planned_total - planned_done, 0.0)
    if planned_total <= 0 or planned_done <= 0 or elapsed <= 0:
        return left
    share = min(planned_done / planned_total, 1.0)
    pace = elapsed / planned_done
    return left * pace ** min(1.0, share / TRUST_MEASURED_AT)
