"""Every default that more than one place uses, defined once.

The CLI, the recipes and the Python API all read these names; nothing here imports torch, so
the CLI can build its `--help` from them without loading the heavy stack.
"""

from __future__ import annotations

DEFAULT_MODEL = "smollm2-135m"
# The precision weights are loaded and computed in (statistics are always float32).
DTYPE = "fp32"

# Calibration: one half of Python's own reference text (ships with Python: no download),
# never the evaluation text, which is the other half.
CALIBRATION_SOURCE = "python-ref-a"
CALIBRATION_SAMPLES = 128
CALIBRATION_SEQLEN = 512
CALIBRATION_SEED = 0

# Perplexity and divergence: the other half of Python's reference text (our WikiText stand-in).
EVAL_SOURCE = "python-ref-b"
EVAL_SEQLEN = 512
EVAL_WINDOWS = 32            # `prunelab ppl`, and the before/after check of prune and quantize
STUDY_EVAL_WINDOWS = 8       # a study's perplexity and divergence measures, per point

PRUNE_METHOD = "wanda"
QUANT_METHOD = "gptq"
QUANT_BITS = 4
QUANT_GROUP_SIZE = 128
EVAL_BATCH_SIZE = 16
PRUNE_BATCH_SIZE = 8         # calibration windows per forward pass while pruning on an accelerator
# On the CPU, windows per forward = this // their length (at least 1): a forward of a few
# hundred tokens keeps its activations in the caches, where 2048 spill (findings/peers.md).
PRUNE_CPU_TOKENS_PER_FORWARD = 512
PERPLEXITY_BATCH_SIZE = 4    # windows per forward pass of a perplexity measurement

# Studies on a Ray cluster (`prunelab study --executor ray`, `prunelab.study.ray_executor`).
RAY_CPUS_PER_POINT = 1       # CPUs a point's worker reserves (its torch threads)
RAY_MAX_RETRIES = 3          # restarts of a lost worker, and retries of its point, before giving up
RAY_CONNECT_TIMEOUT_S = 5.0  # an --address that does not answer within this is refused
# A point's result larger than this (pickled) goes through the shared directory, not Ray's
# object store; Ray itself inlines objects up to 100 KB in the reply.
RAY_INLINE_RESULT_BYTES = 100_000
