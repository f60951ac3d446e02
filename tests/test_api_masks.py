"""`prune(..., keep_masks=True)` hands back exactly the zeros it made, for later stages."""

import torch

import prunelab
from prunelab import arch
from prunelab.data.corpora import CalibrationConfig
from prunelab.testing import tiny_loaded


def test_kept_masks_are_the_pruned_weights(tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    loaded = tiny_loaded("llama")
    result = prunelab.prune(loaded, "wanda", 0.5, progress=False, keep_masks=True,
                            calibration=CalibrationConfig(str(text), 4, 16))
    layers = {f"{arch.find_blocks(loaded.model).path}.{i}.{n}": m
              for i, b in enumerate(arch.find_blocks(loaded.model).blocks)
              for n, m in arch.prunable_layers(b).items()}
    assert set(result.masks) == set(layers)
    for name, layer in layers.items():
        mask = result.masks[name]
        assert mask.dtype == torch.bool and mask.device.type == "cpu"
        assert torch.equal(mask, arch.weight_matrix(layer) == 0)
    assert "masks" not in result.to_dict()
    plain = prunelab.prune(tiny_loaded("llama"), "magnitude", 0.5, progress=False)
    assert plain.masks == {}
