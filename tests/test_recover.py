"""The transfer settings' invariants, checked weight by weight after real training steps, and
cheap retraining (biases/norms/head, LoRA, MaskLoRA) on tiny random models."""

import pytest
import torch

from prunelab.api import prune
from prunelab.errors import PrunelabError
from prunelab.recover import (TrainConfig, TransferSetting, add_adapters, fine_tune,
                              merge_adapters, select_trainable)
from prunelab.testing import tiny_loaded, tiny_model

# A large learning rate and weight decay: every weight that is allowed to move does.
FAST = dict(lr=5e-2, epochs=2, weight_decay=0.1, warmup=0.0, batch_size=4, seed=0)


def _examples(n=24, length=12, vocab=260, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (length,), generator=generator) for _ in range(n)]


def _lm_loss(model, batch):
    return model(input_ids=batch, labels=batch).loss


def _magnitude_masks(model, sparsity=0.5):
    loaded = tiny_loaded()
    loaded.model.load_state_dict(model.state_dict())
    result = prune(loaded, method="magnitude", sparsity=sparsity, keep_masks=True,
                   progress=False)
    return result.masks


def _train(setting_name, steps=None):
    model = tiny_model()
    masks = _magnitude_masks(model)
    pretrained = {k: v.clone() for k, v in model.state_dict().items()}
    setting = TransferSetting(setting_name, model, masks)
    result = fine_tune(model, _examples(), torch.stack, _lm_loss,
                       TrainConfig(**FAST, max_steps=steps), setting=setting, progress=False)
    return model, masks, pretrained, result


def _masked(model, masks):
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        yield name, modules[name].weight.detach(), mask


def test_sparse_keeps_every_pruned_weight_at_zero_through_the_last_step():
    model, masks, _, result = _train("sparse")
    assert result.steps == 12  # 24 examples / 4 per batch x 2 epochs, the last included
    assert result.setting["masked_weights"] > 0 and result.setting["masked_nonzero"] == 0
    for name, weight, mask in _masked(model, masks):
        assert int((weight[mask] != 0).sum()) == 0, name
        assert int((weight[~mask] == 0).sum()) < mask.numel() // 100, name  # the rest trains


def test_freeze_keeps_every_frozen_weight_bit_identical():
    model, masks, pretrained, _ = _train("freeze")
    for name, weight, mask in _masked(model, masks):
        before = pretrained[f"{name}.weight"]
        assert torch.equal(weight[mask], before[mask]), name
        assert not torch.equal(weight[~mask], before[~mask]), name  # the large ones moved


def test_sparse_to_dense_regrows_and_dense_ignores_the_mask():
    model, masks, _, _ = _train("sparse-to-dense")
    regrown = sum(int((w[m] != 0).sum()) for _, w, m in _masked(model, masks))
    assert regrown > 0.9 * sum(int(m.sum()) for m in masks.values())
    model, masks, pretrained, _ = _train("dense")
    for name, weight, mask in _masked(model, masks):
        assert not torch.equal(weight[mask], pretrained[f"{name}.weight"][mask])


def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_weights(tmp_path):
    masks = _magnitude_masks(tiny_model())
    config = TrainConfig(**FAST, checkpoint_every=5)
    straight = tiny_model()
    fine_tune(straight, _examples(), torch.stack, _lm_loss, config,
              setting=TransferSetting("sparse", straight, masks), progress=False)

    class Killed(Exception):
        pass

    calls = {"n": 0}

    def dies_at_step_seven(model, batch):
        calls["n"] += 1
        if calls["n"] == 8:
            raise Killed
        return _lm_loss(model, batch)

    checkpoint = tmp_path / "ft" / "state.pt"
    interrupted = tiny_model()
    with pytest.raises(Killed):
        fine_tune(interrupted, _examples(), torch.stack, dies_at_step_seven, config,
                  setting=TransferSetting("sparse", interrupted, masks), checkpoint=checkpoint,
                  progress=False)
    assert checkpoint.is_file() and not list(checkpoint.parent.glob("*.tmp"))
    resumed = tiny_model()
    result = fine_tune(resumed, _examples(), torch.stack, _lm_loss, config,
                       setting=TransferSetting("sparse", resumed, masks), checkpoint=checkpoint,
                       progress=False)
    assert result.resumed_from == 5 and result.steps == 12 and not checkpoint.exists()
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_masklora_merges_without_filling_a_single_zero_and_plain_lora_does():
    for masked, expect_zeros_kept in ((True, True), (False, False)):
        model = tiny_model()
        masks = _magnitude_masks(model)
        TransferSetting("sparse", model, masks).start()
        select_trainable(model, [])
        adapters = add_adapters(model, list(masks), rank=4, alpha=8, masked=masked)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert trainable == adapters and 0 < trainable < 0.5 * sum(
            p.numel() for p in model.parameters())
        fine_tune(model, _examples(), torch.stack, _lm_loss, TrainConfig(**FAST),
                  progress=False)
        assert merge_adapters(model) == len(masks)
        zeros = sum(int((w[m] == 0).sum()) for _, w, m in _masked(model, masks))
        kept = zeros == sum(int(m.sum()) for m in masks.values())
        assert kept == expect_zeros_kept


def test_perp_subsets_train_only_what_they_name():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count = select_trainable(model, ["norms", "head"])
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all("norm" in n or "lm_head" in n or "embed_tokens" in n for n in names)
    assert count == sum(p.numel() for p in model.parameters() if p.requires_grad)
    fine_tune(model, _examples(), torch.stack, _lm_loss, TrainConfig(**FAST), progress=False)
    after = model.state_dict()
    for name in before:
        if "proj" in name:  # attention and MLP matrices are not in the subset
            assert torch.equal(before[name], after[name]), name


@pytest.mark.parametrize("change, words", [
    (dict(lr=0), "learning rate 0"), (dict(epochs=0), "epochs 0"),
    (dict(warmup=1.5), "warm-up share"), (dict(batch_size=0), "batch size"),
])
def test_bad_training_configs_are_refused(change, words):
    with pytest.raises(PrunelabError, match=words):
        TrainConfig(**change).validate()


def test_bad_settings_and_masks_are_refused():
    model = tiny_model()
    with pytest.raises(PrunelabError, match="unknown transfer setting 'sparser'"):
        TransferSetting("sparser", model, {})
    with pytest.raises(PrunelabError, match="does not have"):
        TransferSetting("sparse", model, {"model.layers.99.mlp.up_proj": torch.zeros(2, 2)})
    name = "model.layers.0.mlp.up_proj"
    with pytest.raises(PrunelabError, match="has shape"):
        TransferSetting("sparse", model, {name: torch.zeros(3, 3, dtype=torch.bool)})
    with pytest.raises(PrunelabError, match="unknown trainable subset"):
        select_trainable(model, ["everything"])
    with pytest.raises(PrunelabError, match="no training examples"):
        fine_tune(model, [], torch.stack, _lm_loss, TrainConfig())


def _local_task(tmp_path, n=40):
    import json

    from prunelab.tasks.local import load_task_file
    from prunelab.tasks.registry import register

    rows = [{"id": str(i), "input": f"{i} plus 1?", "choices": [str(i + 1), str(i + 2)],
             "answer": 0} for i in range(n)]
    (tmp_path / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "sums.yaml").write_text("name: sums\nkind: mc\ndata: sums.jsonl\n")
    (task,) = load_task_file(tmp_path / "sums.yaml")
    register(task)
    return task


@pytest.mark.parametrize("setting", ["sparse", "freeze"])
def test_transfer_trains_only_on_items_the_evaluation_does_not_test(tmp_path, setting):
    from prunelab.recover.data import training_items
    from prunelab.recover.run import TransferPlan, transfer

    task = _local_task(tmp_path)
    tested = {item.id for item in task.select(10, 0)}
    assert not tested & {item.id for item in training_items(task, 10, 0)}
    loaded = tiny_loaded()
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    plan = TransferPlan(setting, method="magnitude", sparsity=0.5, train_on=["sums"],
                        train=TrainConfig(**{**FAST, "epochs": 1}))
    record = transfer(loaded, plan, eval_limit=10, eval_seed=0, progress=False)
    assert record["train_examples"] == 30 and record["steps"] == 8
    # the held weights (pruned or frozen) are not counted as trained
    total = sum(p.numel() for p in loaded.model.parameters())
    assert record["masked_weights"] > 0
    assert record["trainable"] == total - record["masked_weights"]
    assert record["trainable_fraction"] == pytest.approx(record["trainable"] / total)
    name = "model.layers.0.mlp.up_proj.weight"
    weight = loaded.model.state_dict()[name]
    if setting == "sparse":
        assert record["masked_nonzero"] == 0
    else:  # freeze: nothing zeroed, the small weights kept, the rest trained
        small = before[name].abs() <= before[name].abs().median()
        assert torch.equal(weight[small], before[name][small]) and not torch.equal(weight,
                                                                                  before[name])
    with pytest.raises(PrunelabError, match="no training split"):
        transfer(tiny_loaded(), plan, eval_limit=None, progress=False)
    with pytest.raises(PrunelabError, match="leaves 0 items"):
        transfer(tiny_loaded(), plan, eval_limit=40, progress=False)


def test_masks_from_a_pruned_directory_and_their_bad_shapes(tmp_path):
    from prunelab.api import save
    from prunelab.recover.transfer import masks_from_directory

    pruned = tiny_loaded()
    result = prune(pruned, method="magnitude", sparsity=0.5, keep_masks=True, progress=False)
    save(pruned, tmp_path / "pruned", result)
    masks = masks_from_directory(tiny_model(), tmp_path / "pruned")
    assert masks.keys() == result.masks.keys()
    assert all(torch.equal(masks[k], result.masks[k]) for k in masks)
    other = tiny_model()
    other.model.layers[0].mlp.up_proj = torch.nn.Linear(32, 48, bias=False)
    with pytest.raises(PrunelabError, match="has shape"):
        masks_from_directory(other, tmp_path / "pruned")
    with pytest.raises(PrunelabError, match="no .safetensors"):
        masks_from_directory(tiny_model(), tmp_path)


@pytest.mark.parametrize("args, words", [
    (["--setting", "sparser"], "unknown transfer setting"),
    (["--setting", "sparse"], "needs a mask"),
    (["--setting", "sparse", "--method", "magnitude", "--sparsity", "1.5"], "sparsity"),
    (["--setting", "freeze", "--method", "magnitude", "--sparsity", "0"], "prunes nothing"),
    (["--setting", "dense", "--lr", "0"], "learning rate 0"),
    (["--setting", "dense", "--epochs", "0"], "epochs 0"),
    (["--setting", "dense", "--trainable", "weights"], "unknown trainable subset"),
])
def test_transfer_cli_refuses_bad_input_in_one_line(tmp_path, args, words):
    from tests.cli_helpers import run

    result = run("transfer", "smollm2-135m", "--out", str(tmp_path / "o"), "--train-on",
                 "synth_arithmetic:1", *args)
    assert result.returncode == 2 and words in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "o").exists()


def test_perp_retrains_on_text_windows(tmp_path):
    from prunelab.recover.run import TransferPlan, transfer

    text = tmp_path / "t.txt"
    text.write_text("Pruned models can be retrained cheaply on plain text. " * 60)
    loaded = tiny_loaded()
    plan = TransferPlan("sparse", method="magnitude", sparsity=0.5, train_on=[f"text:{text}"],
                        trainable=["biases", "norms"], max_items=8,
                        train=TrainConfig(**{**FAST, "epochs": 1}))
    record = transfer(loaded, plan, progress=False)
    assert record["train_examples"] == 8 and record["steps"] == 2
    assert 0 < record["trainable_fraction"] < 0.05 and record["masked_nonzero"] == 0


def test_a_non_finite_loss_stops_training_before_it_is_applied():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    setting = TransferSetting("sparse", model, _magnitude_masks(model))
    with pytest.raises(PrunelabError, match="diverged at step 1"):
        fine_tune(model, _examples(), torch.stack, lambda m, b: _lm_loss(m, b) * float("inf"),
                  TrainConfig(**FAST), setting=setting, progress=False)
    masks = _magnitude_masks(tiny_model())
    for name, weight, mask in _masked(model, masks):  # zeroed by start(), nothing else moved
        assert torch.equal(weight[~mask], before[f"{name}.weight"][~mask]), name
