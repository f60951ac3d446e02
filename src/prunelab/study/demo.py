"""The built-in demo study (`prunelab demo`): also in recipes/demo.yaml, kept identical by a test.

Sized to finish well within 20 minutes on 2 CPU cores: small calibration (32 windows of 256
tokens), three sparsities per method, 30 items per task level. Measured on a quiet 2-core
machine: per prune ~5 s (magnitude), ~35 s (Wanda), ~65 s (SparseGPT); per model ~45 s of
evaluation, 8-shot arithmetic the largest part (10 models).
Families were chosen where SmolLM2-135M is above chance when dense on some levels
(1-digit arithmetic, 8-shot arithmetic) or where the metric is continuous (bits per byte);
its multi-digit arithmetic and logical deduction are at chance and are flagged as such.
"""

from __future__ import annotations

import yaml

from prunelab.study.recipe import Recipe, parse_recipe

DEMO_YAML = """\
# The Junk DNA question on smollm2-135m: does pruning hurt harder tasks first?
name: demo
description: >-
  Magnitude, Wanda and SparseGPT on SmolLM2-135M-Instruct at 30-70% sparsity; three task
  families with three difficulty levels each (digits, shots, language), 30 items per level.
models: [smollm2-135m]
compressions:
  - method: magnitude
    sparsity: [0.3, 0.5, 0.7]
  - method: wanda
    sparsity: [0.3, 0.5, 0.7]
  - method: sparsegpt
    sparsity: [0.3, 0.5, 0.7]
tasks:
  # digits of the operands (1-3), on multiple-choice arithmetic
  - arithmetic:1
  - arithmetic:2
  - arithmetic:3
  # in-context demonstrations (8, 2, 0 shots) on the same 2-digit items: fewer = harder
  - arithmetic_shots:8
  - arithmetic_shots:2
  - arithmetic_shots:0
  # language resource level: bits per byte on the same sentences in English, German, Polish
  - multiemo_ppl:en
  - multiemo_ppl:de
  - multiemo_ppl:pl
seeds: [0]
calibration:
  source: squadshifts-new_wiki
  n_samples: 32
  seqlen: 256
eval:
  limit: 30
  seed: 0
  batch_size: 16
analysis:
  n_boot: 1000
"""


def demo_recipe(overrides: list[str] | None = None) -> Recipe:
    return parse_recipe(yaml.safe_load(DEMO_YAML), "the built-in demo recipe", overrides)
