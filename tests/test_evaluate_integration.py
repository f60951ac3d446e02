"""The engine on the real default model (smollm2-135m): small, marked `integration`."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2():
    from prunelab.zoo.models import load_model

    return load_model("smollm2-135m")  # fetched and converted on first use, like any user's


def test_packed_scoring_equals_plain_on_the_real_model(smollm2):
    from prunelab.evaluate.runner import evaluate

    # demonstrations make a long shared prompt; seven choices share it
    packed = evaluate(smollm2, ["synth_arithmetic_shots:2"], limit=6, progress=False)
    plain = evaluate(smollm2, ["synth_arithmetic_shots:2"], limit=6, progress=False,
                     packing=False, batch_size=3)
    for a, b in zip(packed.examples, plain.examples):
        assert a.example_id == b.example_id and a.prediction == b.prediction
        assert a.choice_scores_sum == pytest.approx(b.choice_scores_sum, abs=1e-3)
    (row,) = packed.summary()
    assert row["n"] == 6 and row["chance"] == pytest.approx(1 / 7)


def test_generation_answers_on_one_line(smollm2):
    from prunelab.evaluate.runner import evaluate
    from prunelab.tasks.base import Item, Task, Template
    from prunelab.tasks.synthetic_arithmetic import synthetic_arithmetic_items

    # generated sums asked for an answer, not a choice (no BIG-bench needed)
    items = [Item(id=it.id, input=it.input, targets=(it.answer,))
             for it in synthetic_arithmetic_items(1)[:20]]
    sums = Task(name="sums:1", family="sums", axis="digits", level=1, level_rank=0,
                kind="generate", metric="contains", max_new_tokens=8, shots=2,
                loader=lambda: items, template=Template(separator="\n"))
    results = evaluate(smollm2, [sums], limit=6, progress=False)
    for ex in results.examples:
        assert "\n" not in ex.prediction and ex.gold_logprob < 0
        assert set(ex.scores) == {"contains", "exact_match", "f1"}
    assert any(ex.prediction for ex in results.examples)
