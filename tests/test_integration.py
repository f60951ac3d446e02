"""Prune the real default model (smollm2-135m, fetched and converted once into the cache)."""

import pytest

import prunelab
from prunelab.data.corpora import CalibrationConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm():
    loaded = prunelab.load_model("smollm2-135m")
    dense = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    return loaded, dense


def test_default_model_loads_with_caveat(smollm):
    loaded, _ = smollm
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert loaded.dequantized and not loaded.add_bos
    assert len(loaded.model.model.layers) == 30


def test_wanda_beats_magnitude_on_real_model(smollm):
    loaded, dense = smollm
    small = dict(source="python-ref-b", seqlen=256, n_windows=4)
    dense_ppl = prunelab.perplexity(loaded, **small)
    assert 5 < dense_ppl < 60

    result = prunelab.prune(loaded, "wanda", 0.5, calibration=CalibrationConfig(
        n_samples=8, seqlen=256, seed=0), progress=False)
    assert len(result.layers) == 30 * 7
    for layer in result.layers:
        assert abs(layer.zeros_after - 0.5 * layer.numel) <= layer.rows
    wanda_ppl = prunelab.perplexity(loaded, **small)

    loaded.model.load_state_dict(dense)
    prunelab.prune(loaded, "magnitude", 0.5, progress=False)
    magnitude_ppl = prunelab.perplexity(loaded, **small)
    loaded.model.load_state_dict(dense)

    assert dense_ppl < wanda_ppl < magnitude_ppl, (dense_ppl, wanda_ppl, magnitude_ppl)


def test_restoring_dense_weights_restores_perplexity(smollm):
    loaded, dense = smollm
    loaded.model.load_state_dict(dense)
    a = prunelab.perplexity(loaded, seqlen=128, n_windows=2)
    prunelab.prune(loaded, "magnitude", 0.3, progress=False)
    loaded.model.load_state_dict(dense)
    assert prunelab.perplexity(loaded, seqlen=128, n_windows=2) == pytest.approx(a, rel=1e-6)
