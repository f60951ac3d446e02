"""OWL's allocation, SparseGPT at OWL's block sparsities and GBLM's gradients beside the
reference code, on the same real inputs.

Same model (smollm2-135m, fp32), same calibration windows, one process. From luuyin/OWL it
calls `check_outlier_mean` (the outlier ratio) on each block's concatenated Wanda scores and
transcribes the two lines that map ratios to sparsities (they sit inside its pruning loop);
from VILA-Lab/GBLM-Pruner it runs `gradient_computation` (its per-window accumulator of
(100·g)²) over the same windows. The references are not part of prunelab: clone them first.

    git clone https://github.com/luuyin/OWL ../OWL
    git clone https://github.com/VILA-Lab/GBLM-Pruner ../GBLM-Pruner
    git clone https://github.com/IST-DASLab/sparsegpt ../sparsegpt
    git clone https://github.com/zyxxmu/DSnoT ../DSnoT
    python bench/compare_unstructured_reference.py --owl-repo ../OWL --gblm-repo ../GBLM-Pruner \
        --sparsegpt-repo ../sparsegpt --sparsegpt-at 0.6662,0.7529 --dsnot-repo ../DSnoT

Prints, per block, both outlier ratios and sparsities; for GBLM, the largest relative
difference of the gradient norms and how much of block 0's masks agree. For SparseGPT, on
block 0's q_proj and down_proj at each given sparsity (OWL-SparseGPT prunes its blocks at
sparsities like these), how much prunelab's masks and weights agree with the reference's
`fasterprune` on the same Hessian, beside how much the reference agrees with itself when
the Hessian's sums come in another order: the OBS sweep amplifies rounding, so that drift is
the yardstick. For DSnoT, its statistics against the reference's accumulator on block 0.
"""

from __future__ import annotations

import argparse
import sys
import types

import numpy as np
import torch
import transformers

sys.modules.setdefault("datasets", types.ModuleType("datasets"))
sys.modules["datasets"].load_dataset = None
transformers.AdamW = torch.optim.AdamW  # imported by the GBLM script, gone from transformers 5
torch.cuda.empty_cache = lambda *a, **k: None

import prunelab  # noqa: E402
from prunelab import arch, engine  # noqa: E402
from prunelab.data.corpora import CalibrationConfig, calibration_windows  # noqa: E402
from prunelab.methods import masks  # noqa: E402
from prunelab.methods.base import PlanContext, make_method  # noqa: E402
from prunelab.methods.gblm import gblm_scores  # noqa: E402


def compare_owl(loaded, windows, repo: str, sparsity: float, lam: float, m: float) -> None:
    sys.path.insert(0, repo)
    from lib.prune_all import check_outlier_mean  # the reference's own function

    model = loaded.model
    found = arch.find_blocks(model)
    stats = engine._dense_statistics(model, found.blocks, found.path, ["input_sq_sum"], windows,
                                     8, "cpu", False)
    weights = {f"{found.path}.{i}.{n}": arch.weight_matrix(layer)
               for i, block in enumerate(found.blocks)
               for n, layer in arch.prunable_layers(block).items()}
    method = make_method("owl", {"lam": lam, "m": m})
    ours = method.plan(PlanContext(weights, sparsity, None, stats, tuple(windows.shape)))
    ratios = []
    for i in range(len(found.blocks)):
        names = [n for n in weights if n.startswith(f"{found.path}.{i}.")]
        # the reference's scaler_row is the running mean over windows of Σ x²: same ranking
        metric = [weights[n].abs() * torch.sqrt(stats[n]["input_sq_sum"] / len(windows))
                  for n in names]
        ratios.append(check_outlier_mean(torch.cat([x.flatten() for x in metric]), m))
    # The reference's mapping (two lines inside prune_wanda_outlier), transcribed:
    layer_ratio = np.array(ratios)
    layer_ratio = (layer_ratio - layer_ratio.min()) * (
        1 / (layer_ratio.max() - layer_ratio.min()) * lam * 2)
    layer_ratio = layer_ratio - np.mean(layer_ratio) + (1 - sparsity)
    reference = 1 - layer_ratio
    worst = 0.0
    print("block  ratio ours  ratio ref  sparsity ours  sparsity ref")
    for i in range(len(found.blocks)):
        name = next(n for n in weights if n.startswith(f"{found.path}.{i}."))
        mine = ours[name].sparsity
        worst = max(worst, abs(mine - reference[i]))
        print(f"{i:5d}  {method.ratios[i] * 100:10.4f}  {ratios[i]:9.4f}  {mine:13.5f}  "
              f"{reference[i]:12.5f}")
    print(f"OWL: largest difference of a block sparsity {worst:.2e}")


def compare_gblm(loaded, windows, repo: str, sparsity: float) -> None:
    sys.path.insert(0, repo)
    sys.modules["transformers"].AdamW = torch.optim.AdamW  # (loading a model resets it)
    from gradient_computation import gradient_computation  # the reference's accumulator

    model = loaded.model
    found = arch.find_blocks(model)
    ours = engine.gather_gradients(model, windows, ["scaled_grad_sq_sum"])
    reference = gradient_computation(model, 100)
    model.config.use_cache = False
    for n, window in enumerate(windows, start=1):
        model.zero_grad()
        model(input_ids=window[None], labels=window[None]).loss.backward()
        reference.update_gradient(model, n)
    model.zero_grad(set_to_none=True)
    stats = engine._dense_statistics(model, found.blocks, found.path, ["input_sq_sum"],
                                     windows[:, :], 8, "cpu", False)
    worst, agree, total = 0.0, 0, 0
    for name, layer in arch.prunable_layers(found.blocks[0]).items():
        full = f"{found.path}.0.{name}"
        g_ours = ours[full]["scaled_grad_sq_sum"].sqrt()
        g_ref = reference.gradients_l2[f"{name}_layer_0"].sqrt()
        worst = max(worst, float(((g_ours - g_ref).abs() / g_ref.abs().clamp_min(1e-6)).max()))
        weight = arch.weight_matrix(layer)
        x_sq = stats[full]["input_sq_sum"]
        ours_mask = masks.select(gblm_scores(weight, x_sq, len(windows), g_ours / 100, 100.0),
                                 sparsity, None, per_row=True)
        ref_metric = weight.abs() * torch.sqrt(x_sq / len(windows)) + weight.abs() * g_ref.half()
        order = torch.sort(ref_metric, dim=-1, stable=True).indices
        ref_mask = torch.zeros_like(ours_mask).scatter_(
            1, order[:, : int(weight.shape[1] * sparsity)], True)
        agree += int((ours_mask == ref_mask).sum())
        total += ours_mask.numel()
    print(f"GBLM block 0: largest relative difference of G {worst:.2e} (the reference rounds "
          f"G to fp16); masks agree on {agree / total:.4%} of weights")


def _run_windows_recording(loaded, windows, layers: dict, record) -> None:
    """Run the model over `windows` one at a time (the references' batch of 1), calling
    record(name, layer input, layer output) for each of `layers` on every window."""
    handles = [layer.register_forward_hook(
        lambda module, args, output, name=name: record(name, args[0].data, output.data))
        for name, layer in layers.items()]
    with torch.no_grad():
        for window in windows:
            loaded.model(window[None])
    for handle in handles:
        handle.remove()


def compare_sparsegpt(loaded, windows, repo: str, sparsities: list[float]) -> None:
    sys.path.insert(0, repo)
    torch.cuda.synchronize = lambda *a, **k: None
    import sparsegpt as reference  # the reference's SparseGPT class

    from prunelab.methods.sparsegpt import sparsegpt_prune

    block = arch.find_blocks(loaded.model).blocks[0]
    layers = {n: layer for n, layer in arch.prunable_layers(block).items()
              if n.endswith(("q_proj", "down_proj"))}
    accumulators = {n: reference.SparseGPT(layer) for n, layer in layers.items()}
    inputs: dict[str, list] = {n: [] for n in layers}

    def record(name, x, y):
        accumulators[name].add_batch(x, y)
        inputs[name].append(x.reshape(-1, x.shape[-1]).double())

    _run_windows_recording(loaded, windows, layers, record)

    def reference_prune(layer, original, hessian, sparsity):
        layer.weight.data = original.clone()
        pruner = reference.SparseGPT(layer)
        pruner.H, pruner.nsamples = hessian.clone(), len(windows)
        pruner.fasterprune(sparsity)
        return layer.weight.data.clone()

    def agree(a, b):  # share of entries where both are zero or both are not
        return float(((a == 0) == (b == 0)).double().mean())

    def drift(a, b):
        return float((a - b).norm() / b.norm())

    # The last column: how many more weights the reference prunes (its threshold is `<=` the
    # int(n·s)-th smallest score of a block, one more than int(n·s); prunelab prunes exactly).
    print("layer        sparsity  masks ours/ref  weights ours/ref  masks ref/ref'  "
          "weights ref/ref'  zeros ref-ours")
    for name, layer in layers.items():
        original = layer.weight.data.clone()
        hessian = accumulators[name].H
        x = torch.cat(inputs[name])
        reordered = ((2 / x.shape[0]) * x.T @ x).float()  # the same H, summed otherwise
        for sparsity in sparsities:
            ref = reference_prune(layer, original, hessian, sparsity)
            ref_again = reference_prune(layer, original, reordered, sparsity)
            ours, pruned, _ = sparsegpt_prune(original.clone(), hessian.clone(), sparsity)
            extra = int((ref == 0).sum()) - int(pruned.sum())
            print(f"{name.split('.')[-1]:12} {sparsity:8.4f}  {agree(ours, ref):14.6f}  "
                  f"{drift(ours, ref):16.2e}  {agree(ref_again, ref):14.6f}  "
                  f"{drift(ref_again, ref):16.2e}  {extra:+d}")
        layer.weight.data = original


def compare_dsnot(loaded, windows, repo: str) -> None:
    """DSnoT's statistics, which set what its threshold means: the reference's `WrappedGPT`
    (running mean over windows of each window's Σ_t x, its variance, Σ x²) against prunelab's
    on block 0's inputs. Its swap loop is checked against a transcription in the tests."""
    sys.path.insert(0, repo)
    from lib.layerwrapper import WrappedGPT  # the reference's accumulator

    found = arch.find_blocks(loaded.model)
    layers = arch.prunable_layers(found.blocks[0])
    wrapped = {n: WrappedGPT(layer, initial_method="wanda") for n, layer in layers.items()}

    _run_windows_recording(loaded, windows, layers,
                           lambda name, x, y: wrapped[name].add_batch(x, y))
    stats = engine._dense_statistics(loaded.model, found.blocks[:1], found.path,
                                     ["input_mean_var", "input_sq_sum"], windows, 8, "cpu", False)

    def rel(ours, ref):
        return float((ours - ref.flatten()).abs().max() / ref.abs().max())

    print("layer              E[x] scale  variance  Σx² / windows  (largest relative difference)")
    for name in layers:
        full = f"{found.path}.0.{name}"
        moments = stats[full]["input_mean_var"]
        print(f"{name:18} {rel(moments.mean * windows.shape[1], wrapped[name].sum_metric_row):10.2e}"
              f"  {rel(moments.var, wrapped[name].var):8.2e}"
              f"  {rel(stats[full]['input_sq_sum'] / len(windows), wrapped[name].scaler_row):13.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--owl-repo")
    parser.add_argument("--gblm-repo")
    parser.add_argument("--sparsegpt-repo")
    parser.add_argument("--dsnot-repo")
    parser.add_argument("--sparsegpt-at", default="0.6662,0.7529,0.5",
                        help="sparsities for the SparseGPT comparison")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--lam", type=float, default=0.08)
    parser.add_argument("--m", type=float, default=5.0)
    args = parser.parse_args()
    loaded = prunelab.load_model(args.model)
    windows = calibration_windows(loaded, CalibrationConfig(n_samples=args.samples,
                                                            seqlen=args.seqlen, seed=0))
    if args.owl_repo:
        compare_owl(loaded, windows, args.owl_repo, args.sparsity, args.lam, args.m)
    if args.gblm_repo:
        compare_gblm(loaded, windows, args.gblm_repo, 0.5)
    if args.sparsegpt_repo:
        compare_sparsegpt(loaded, windows, args.sparsegpt_repo,
                          [float(x) for x in args.sparsegpt_at.split(",")])
    if args.dsnot_repo:
        compare_dsnot(loaded, windows, args.dsnot_repo)


if __name__ == "__main__":
    main()
