"""Every default that more than one place uses, defined once.

The CLI, the recipes and the Python API all read these names; nothing here imports torch, so
the CLI can build its `--help` from them without loading the heavy stack.
"""

from __future__ import annotations

DEFAULT_MODEL = "smollm2-135m"
# The precision weights are loaded and computed in (statistics are always float32).
DTYPE = "fp32"

# Calibration: SQuADShifts' newer Wikipedia paragraphs, never the evaluation text.
CALIBRATION_SOURCE = "squadshifts-new_wiki"
CALIBRATION_SAMPLES = 128
CALIBRATION_SEQLEN = 512
CALIBRATION_SEED = 0

# Perplexity and divergence: the SQuAD v1.1 dev paragraphs (our WikiText stand-in).
EVAL_SOURCE = "squad-dev"
EVAL_SEQLEN = 512
EVAL_WINDOWS = 32            # `prunelab ppl`, and the before/after check of prune and quantize
STUDY_EVAL_WINDOWS = 8       # a study's perplexity and divergence measures, per point

PRUNE_METHOD = "wanda"
QUANT_METHOD = "gptq"
QUANT_BITS = 4
QUANT_GROUP_SIZE = 128
EVAL_BATCH_SIZE = 16
PRUNE_BATCH_SIZE = 8         # calibration windows per forward pass while pruning
PERPLEXITY_BATCH_SIZE = 4    # windows per forward pass of a perplexity measurement
