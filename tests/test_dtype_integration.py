"""bf16 against fp32 on the real default model: Wanda and SparseGPT at 50% choose (nearly) the
same weights and lose (nearly) the same perplexity.

The text is Python's own reference (pydoc_data.topics), always installed: one half
calibrates, the other is evaluated. Tolerances: at least 99% of keep/prune decisions agree
overall for Wanda (its scores are exact fp32 products of bf16-rounded weights, so only
near-ties flip; 99.66% measured) and 95% for SparseGPT (its sequential updates carry the
rounding of each block's outputs into the next block's statistics; 96.56% measured on
2026-12-07); the pruned perplexity within 3%.
"""

import pytest
import torch

import prunelab
from prunelab.data.corpora import CalibrationConfig

pytestmark = pytest.mark.integration

AGREEMENT = {"wanda": 0.99, "sparsegpt": 0.95}
PERPLEXITY_REL = 0.03


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    from pydoc_data.topics import topics

    parts = [topics[k] for k in sorted(topics)]
    half = len(parts) // 2
    folder = tmp_path_factory.mktemp("pydoc")
    calibration, evaluation = folder / "calib.txt", folder / "eval.txt"
    calibration.write_text("\n\n".join(parts[:half]))
    evaluation.write_text("\n\n".join(parts[half:]))
    return str(calibration), str(evaluation)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_bf16_masks_and_perplexity_match_fp32(texts, method):
    calibration_text, eval_text = texts
    calibration = CalibrationConfig(calibration_text, 16, 256, 0)
    masks, ppl = {}, {}
    for dtype in ("fp32", "bf16"):
        loaded = prunelab.load_model("smollm2-135m", dtype=dtype)
        assert next(loaded.model.parameters()).dtype == (
            torch.bfloat16 if dtype == "bf16" else torch.float32)
        masks[dtype] = prunelab.prune(loaded, method, 0.5, calibration=calibration,
                                      progress=False, keep_masks=True).masks
        ppl[dtype] = prunelab.perplexity(loaded, eval_text, 256, 8)
    same = sum(int((masks["fp32"][k] == masks["bf16"][k]).sum()) for k in masks["fp32"])
    total = sum(m.numel() for m in masks["fp32"].values())
    assert same / total >= AGREEMENT[method], (method, same / total)
    assert ppl["bf16"] == pytest.approx(ppl["fp32"], rel=PERPLEXITY_REL), ppl
    assert all(m.dtype == torch.bool for m in masks["bf16"].values())
