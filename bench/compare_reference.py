"""prunelab beside the reference implementations (locuslab/wanda, IST-DASLab/sparsegpt).

Same model (smollm2-135m, fp32), same calibration windows, same CPU, one process.
The references' own pruning loops run unmodified; only their data loader is replaced by our
windows, and each decoder layer's forward is patched so that it computes the rotary
embeddings transformers 5 expects from the caller (the references were written for 4.3x).
Their code is not part of prunelab: fetch the two repositories and point at them:

    git clone https://github.com/locuslab/wanda ../wanda
    git clone https://github.com/IST-DASLab/sparsegpt ../sparsegpt
    python bench/compare_reference.py --wanda-repo ../wanda --sparsegpt-repo ../sparsegpt

Prints, per method, both perplexities (squad-dev, 32 x 512), their difference, both pruning
times and how much of the two masks agree. `--self-specs sparsegpt24` also prunes with
prunelab at batch size 1, and `--permute 1` feeds the reference the windows in another
order: both change only the order of floating-point sums, which measures how far two
equally correct runs drift apart. `--calib-seeds 0,1,2,3` repeats every method on other
calibration draws and prints the mean and spread of the perplexity difference: a criterion
such as "within 1%" is only meaningful against that spread.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import torch

REPOS = {"wanda": Path("../wanda"), "sparsegpt": Path("../sparsegpt"), "gptq": Path("../gptq")}
sys.modules.setdefault("datasets", types.ModuleType("datasets"))
sys.modules["datasets"].load_dataset = None
torch.cuda.synchronize = lambda *a, **k: None
torch.cuda.empty_cache = lambda *a, **k: None

import prunelab  # noqa: E402
from prunelab.allocator import pruning_allocator  # noqa: E402
from prunelab.data.corpora import CalibrationConfig, calibration_windows  # noqa: E402


def patch_layers(model):
    """Let each decoder layer be called the 4.3x way: (hidden, attention_mask, position_ids)."""
    rotary = model.model.rotary_emb
    for layer in model.model.layers:
        inner = layer.forward

        def forward(hidden, *args, _inner=inner, **kw):
            if kw.get("position_embeddings") is None:
                pos = kw.get("position_ids")
                if pos is None:
                    pos = torch.arange(hidden.shape[1]).unsqueeze(0)
                kw["position_embeddings"] = rotary(hidden, pos)
            out = _inner(hidden, *args, **kw)
            return out if isinstance(out, tuple) else (out,)

        layer.forward = forward


def unpatch_layers(model):
    for layer in model.model.layers:
        if "forward" in layer.__dict__:
            del layer.forward


def load():
    loaded = prunelab.load_model("smollm2-135m")
    loaded.model.config.use_cache = False
    return loaded


def ref_wanda(loaded, windows, sparsity, n, m):
    sys.path.insert(0, str(REPOS["wanda"]))
    from lib import prune as wp  # noqa: PLC0415

    model = loaded.model
    model.seqlen = windows.shape[1]
    model.hf_device_map = {}
    wp.get_loaders = lambda *a, **k: ([(w.unsqueeze(0), None) for w in windows], None)
    args = types.SimpleNamespace(nsamples=len(windows), seed=0, sparsity_ratio=sparsity,
                                 use_variant=False)
    patch_layers(model)
    try:
        wp.prune_wanda(args, model, loaded.tokenizer, torch.device("cpu"), prune_n=n, prune_m=m)
    finally:
        unpatch_layers(model)


def ref_sparsegpt(loaded, windows, sparsity, n, m):
    sys.path.insert(0, str(REPOS["sparsegpt"]))
    import llama  # noqa: PLC0415

    model = loaded.model
    model.seqlen = windows.shape[1]
    llama.args = types.SimpleNamespace(
        nsamples=len(windows), true_sequential=False, minlayer=-1, maxlayer=1000,
        prune_only="", invert=False, wbits=16, sparsity=sparsity, prunen=n, prunem=m,
        percdamp=0.01, blocksize=128)
    patch_layers(model)
    try:
        llama.llama_sequential(model, [(w.unsqueeze(0), None) for w in windows], "cpu")
    finally:
        unpatch_layers(model)


def ref_gptq(loaded, windows, bits, group_size):
    """IST-DASLab/gptq's LLaMA loop (asymmetric, no act-order, percdamp 0.01, blocks of 128);
    its `quant.py` falls back to plain torch when the CUDA kernel is not built."""
    sys.path.insert(0, str(REPOS["gptq"]))
    import llama  # noqa: PLC0415

    model = loaded.model
    model.seqlen = windows.shape[1]
    llama.args = types.SimpleNamespace(
        nsamples=len(windows), true_sequential=False, wbits=bits, sym=False, percdamp=0.01,
        groupsize=group_size or -1, act_order=False, static_groups=False)
    patch_layers(model)
    try:
        llama.llama_sequential(model, [(w.unsqueeze(0), None) for w in windows], "cpu")
    finally:
        unpatch_layers(model)


def ref_gptq_4_g64(loaded, windows, sparsity, n, m):
    ref_gptq(loaded, windows, 4, 64)


METHODS = {  # name: (prunelab method, sparsity, pattern, reference runner, n, m[, options])
    "wanda": ("wanda", 0.5, None, ref_wanda, 0, 0),
    "sparsegpt": ("sparsegpt", 0.5, None, ref_sparsegpt, 0, 0),
    "wanda24": ("wanda", 0.5, "2:4", ref_wanda, 2, 4),
    "sparsegpt24": ("sparsegpt", 0.5, "2:4", ref_sparsegpt, 2, 4),
    # GPTQ 4-bit, groups of 64 (smollm2's width 576 is not a multiple of 128); the runner's
    # (sparsity, n, m) arguments carry (bits, group size)
    "gptq4g64": ("gptq", None, None, ref_gptq_4_g64, 0, 0, {"bits": 4, "group_size": 64}),
}


def masks_of(model):
    return {name: (mod.weight == 0) for name, mod in model.model.layers.named_modules()
            if isinstance(mod, torch.nn.Linear)}


def weights_of(model):
    return {name: mod.weight.detach().clone() for name, mod in
            model.model.layers.named_modules() if isinstance(mod, torch.nn.Linear)}


def agreement(a, b, per_layer=0):
    same = sum(int((a[k] == b[k]).sum()) for k in a)
    total = sum(a[k].numel() for k in a)
    if per_layer:
        worst = sorted(((float((a[k] != b[k]).float().mean()), k) for k in a), reverse=True)
        for frac, k in worst[:per_layer]:
            print(f"    {k}: {frac:.2e} of the mask differs", flush=True)
    return same / total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--neval", type=int, default=32)
    parser.add_argument("--methods", default="wanda,sparsegpt,wanda24,sparsegpt24")
    parser.add_argument("--self-specs", default="", help="also run prunelab at batch size 1")
    parser.add_argument("--per-layer", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calib-seeds", default="0",
                        help="comma-separated calibration seeds; each draws other windows and "
                             "runs every method on them (judge a criterion over several draws)")
    parser.add_argument("--out", default="")
    parser.add_argument("--batch-size", type=int, default=8, help="prunelab's batch size")
    parser.add_argument("--permute", type=int, default=-1,
                        help="feed the reference the windows in a seeded random order (a noise "
                             "probe: only the order of floating-point sums changes)")
    parser.add_argument("--wanda-repo", type=Path, default=REPOS["wanda"])
    parser.add_argument("--sparsegpt-repo", type=Path, default=REPOS["sparsegpt"])
    parser.add_argument("--gptq-repo", type=Path, default=REPOS["gptq"])
    args = parser.parse_args()
    needed = {METHODS[n][3].__name__.split("_")[1] for n in args.methods.split(",")}
    for name, repo in (("wanda", args.wanda_repo), ("sparsegpt", args.sparsegpt_repo),
                       ("gptq", args.gptq_repo)):
        if name not in needed:
            continue
        if not (repo / ("lib/prune.py" if name == "wanda" else "llama.py")).is_file():
            sys.exit(f"error: no {name} checkout at {repo}; clone it there or pass --{name}-repo")
        REPOS[name] = repo.resolve()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    loaded = load()
    dense = prunelab.perplexity(loaded, "squad-dev", 512, args.neval)
    # One process: whatever the allocator does for prunelab, it does for the references too
    # (huge pages), except the glibc threshold, which prunelab sets only around its own pruning.
    allocator = pruning_allocator()
    print(f"dense ppl {dense:.3f}; while pruning: {allocator}", flush=True)
    results = {"dense_ppl": dense, "nsamples": args.nsamples, "seqlen": args.seqlen,
               "threads": args.threads, "allocator": allocator, "methods": {}}
    names, seeds = args.methods.split(","), [int(x) for x in args.calib_seeds.split(",")]
    runs = [(seed, name) for seed in seeds for name in names]
    for seed, name in runs:
        method, sparsity, pattern, runner, n, m, *more = METHODS[name]
        options = more[0] if more else {}
        calib = CalibrationConfig(n_samples=args.nsamples, seqlen=args.seqlen, seed=seed)
        windows = calibration_windows(loaded, calib)
        if args.permute >= 0:
            order = torch.randperm(len(windows),
                                   generator=torch.Generator().manual_seed(args.permute))
            windows = windows[order]

        ours = load()
        start = time.perf_counter()
        prunelab.prune(ours, method, sparsity, pattern=pattern, calibration=calib,
                       batch_size=args.batch_size, progress=False, **options)
        ours_s = time.perf_counter() - start
        ours_ppl = prunelab.perplexity(ours, "squad-dev", 512, args.neval)
        ours_masks = masks_of(ours.model)
        ours_weights = weights_of(ours.model) if options.get("bits") else None
        del ours

        ref = load()
        start = time.perf_counter()
        runner(ref, windows, sparsity, n, m)
        ref_s = time.perf_counter() - start
        ref_ppl = prunelab.perplexity(ref, "squad-dev", 512, args.neval)
        ref_masks = masks_of(ref.model)
        ref_weights = weights_of(ref.model) if options.get("bits") else None
        ref_sparsity = (sum(int(v.sum()) for v in ref_masks.values())
                        / sum(v.numel() for v in ref_masks.values()))
        del ref

        row = {"prunelab_ppl": ours_ppl, "reference_ppl": ref_ppl,
               "ppl_diff_pct": 100 * (ours_ppl / ref_ppl - 1),
               "prunelab_s": ours_s, "reference_s": ref_s, "speedup": ref_s / ours_s,
               "reference_sparsity": ref_sparsity,
               "mask_agreement": agreement(ours_masks, ref_masks, args.per_layer)}
        if ours_weights is not None:  # quantized: how many weights are the very same value
            row["weights_equal"] = agreement(ours_weights, ref_weights)
        if name in args.self_specs.split(","):
            single = load()
            prunelab.prune(single, method, sparsity, pattern=pattern, calibration=calib,
                           batch_size=1, progress=False)
            row["prunelab_batch1_ppl"] = prunelab.perplexity(single, "squad-dev", 512, args.neval)
            row["batch1_vs_batch_size_ppl_diff_pct"] = 100 * (row["prunelab_batch1_ppl"] / ours_ppl - 1)
            row["batch1_vs_batch_size_mask_agreement"] = agreement(masks_of(single.model), ours_masks)
            del single
        key = name if len(seeds) == 1 else f"{name}@seed{seed}"
        results["methods"][key] = row
        print(key, json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)
        if args.out:
            partial = Path(args.out + ".partial")  # rename: a reader never sees half a file
            partial.write_text(json.dumps(results, indent=2))
            partial.replace(args.out)
    if len(seeds) > 1:
        for name in names:
            diffs = [row["ppl_diff_pct"] for key, row in results["methods"].items()
                     if key.split("@")[0] == name]
            mean = sum(diffs) / len(diffs)
            spread = (sum((d - mean) ** 2 for d in diffs) / max(len(diffs) - 1, 1)) ** 0.5
            print(f"{name}: ppl difference over {len(diffs)} calibration seeds "
                  f"mean {mean:+.2f}%, sd {spread:.2f}%, each "
                  + ", ".join(f"{d:+.2f}%" for d in diffs), flush=True)


if __name__ == "__main__":
    main()
