"""The built-in demo study (`prunelab demo`): also in recipes/demo.yaml, kept identical by a test.

Sized to finish well within 20 minutes on 2 CPU cores (docs/findings/benchmarks.md has the measured time):
small calibration (32 windows of 256 tokens), three sparsities per method, 40 items per task
level.
The families are those where the dense SmolLM2-135M is above chance on several levels
(number of options) or where the metric is continuous (bits per byte), plus the paper's own
axis, operand digits; levels at chance are flagged and left out of the verdict, which the
report shows. All need no BIG-bench: arithmetic generated in its format (`synth_*`) and
Django's translated messages (`ui_ppl`), see docs/findings/data-sources.md.
"""

from __future__ import annotations

import yaml

from prunelab.study.recipe import Recipe, parse_recipe

DEMO_YAML = """\
# The Junk DNA question on smollm2-135m: does pruning hurt harder tasks first?
name: demo
description: >-
  Magnitude, Wanda and SparseGPT on SmolLM2-135M-Instruct at 30-70% sparsity; three task
  families with three difficulty levels each (digits, options, language), 100 items per level.
models: [smollm2-135m]
compressions:
  - method: magnitude
    sparsity: [0.3, 0.5, 0.7]
  - method: wanda
    sparsity: [0.3, 0.5, 0.7]
  - method: sparsegpt
    sparsity: [0.3, 0.5, 0.7]
tasks:
  # digits of the operands (1-3), on multiple-choice arithmetic generated in BIG-bench's format
  - synth_arithmetic:1
  - synth_arithmetic:2
  - synth_arithmetic:3
  # number of options (2, 4, all 7) on the same 1-digit items: more = harder
  - synth_options:2
  - synth_options:4
  - synth_options:all
  # language resource level: bits per byte on the same Django interface messages in English,
  # German, Polish
  - ui_ppl:en
  - ui_ppl:de
  - ui_ppl:pl
seeds: [0]
calibration:
  source: python-ref-a
  n_samples: 32
  seqlen: 256
eval:
  # 100 items per level: with the continuous measure, the dry run (`--dry-run --run-dir` on
  # a finished run as the pilot) put the smallest detectable extra drop of the hardest level
  # at 0.13, 0.12 and 0.04 on the BIG-bench namesakes of these families; at 40 items 0.20, 0.18
  limit: 100
  seed: 0
  batch_size: 16
analysis:
  n_boot: 1000
  # the gold choice's probability, not 0/1 accuracy: 0/1 scores at 100 items would see only
  # an extra drop of the hardest level of about 0.25
  item_measure: continuous
"""


def demo_recipe(overrides: list[str] | None = None) -> Recipe:
    return parse_recipe(yaml.safe_load(DEMO_YAML), "the built-in demo recipe", overrides)
