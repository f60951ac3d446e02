"""One (system, method) compression in a fresh process, for bench/peers.py.

Runs under prunelab's venv (systems `prunelab` and `reference`) or the peers' venv
(`llmcompressor`, `modelopt`), so it imports nothing of prunelab unless the system is
prunelab's or the references' (they reuse bench/compare_reference.py's patches).

    python bench/peers/worker.py --system S --method M --model-dir D --calib calib.safetensors \
        --out weights.safetensors --result result.json [--threads 2]

Writes the compressed decoder-layer Linear weights (dequantized floats for quantization) to
--out, and to --result: seconds of the compression call alone, peak RSS net of the baseline
taken after imports and model load, and the library versions. A failure writes
{"error": "..."} to --result and exits 1: the bench prints it as that system's row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent

# name: (kind, sparsity, N:M or None, bits, group size ("model" = the model's group size) or None)
METHODS = {
    "sparsegpt50": ("sparsegpt", 0.5, None, None, None),
    "sparsegpt24": ("sparsegpt", 0.5, (2, 4), None, None),
    "wanda50": ("wanda", 0.5, None, None, None),
    "magnitude50": ("magnitude", 0.5, None, None, None),
    "magnitude24": ("magnitude", 0.5, (2, 4), None, None),
    "gptq4g": ("gptq", None, None, 4, "model"),
    "gptq4pc": ("gptq", None, None, 4, None),
}


def status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    """Restart VmHWM from the current RSS (Linux: writing 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def load_hf(model_dir: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    model.eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def layer_weights(model) -> dict:
    """Every 2-D Linear weight inside the decoder layers, keyed by its name under `layers`."""
    import torch

    out = {}
    for name, module in model.model.layers.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, torch.nn.Linear) and weight is not None and weight.dim() == 2:
            out[name + ".weight"] = weight.detach().to(torch.float32).contiguous().clone()
    return out


# ---------------------------------------------------------------- prunelab


def run_prunelab(args, method, windows, group_size):
    import prunelab
    from prunelab.data.corpora import CalibrationConfig, calibration_windows, tokens_digest

    loaded = prunelab.load_model(args.model_dir)
    config = CalibrationConfig(source=args.calib_source, n_samples=len(windows),
                               seqlen=windows.shape[1], seed=args.calib_seed)
    # the very tokens the peers get (drawn by the same function from the same text)
    if tokens_digest(calibration_windows(loaded, config)) != tokens_digest(windows):
        raise RuntimeError("prunelab's calibration windows differ from the bench's token file")

    def compress():
        kind, sparsity, nm, bits, _ = method
        if kind == "gptq":
            prunelab.quantize(loaded, "gptq", bits=bits, group_size=group_size, symmetric=False,
                              calibration=config, progress=False)
        else:
            needs = None if kind == "magnitude" else config
            prunelab.prune(loaded, kind, None if nm else sparsity,
                           pattern=f"{nm[0]}:{nm[1]}" if nm else None, calibration=needs,
                           progress=False)
    return loaded.model, compress


# ---------------------------------------------------------------- reference repositories


def run_reference(args, method, windows, group_size):
    sys.path.insert(0, str(BENCH))
    import compare_reference as ref  # noqa: PLC0415  (its import patches cuda no-ops, datasets)

    import prunelab

    for name in ("wanda", "sparsegpt", "gptq"):
        ref.REPOS[name] = (Path(args.repos) / name).resolve()
    loaded = prunelab.load_model(args.model_dir)
    loaded.model.config.use_cache = False
    kind, sparsity, nm, bits, _ = method
    n, m = nm or (0, 0)

    def compress():
        if kind == "wanda":
            ref.ref_wanda(loaded, windows, sparsity, n, m)
        elif kind == "sparsegpt":
            ref.ref_sparsegpt(loaded, windows, sparsity, n, m)
        elif kind == "gptq":
            ref.ref_gptq(loaded, windows, bits, group_size)
        else:  # magnitude: locuslab/wanda's prune_magnitude (the Wanda paper's baseline)
            import types

            import torch

            # Patch: its unstructured threshold sorts on `.cuda()`; on a CPU-only torch the
            # tensor stays where it is.
            if not torch.cuda.is_available():
                torch.Tensor.cuda = lambda self, *args, **kwargs: self
            sys.path.insert(0, str(ref.REPOS["wanda"]))
            from lib import prune as wp  # noqa: PLC0415

            wp.prune_magnitude(types.SimpleNamespace(sparsity_ratio=sparsity), loaded.model,
                               loaded.tokenizer, "cpu", prune_n=n, prune_m=m)
    return loaded.model, compress


# ---------------------------------------------------------------- llm-compressor


def run_llmcompressor(args, method, windows, group_size):
    kind, sparsity, nm, bits, _ = method
    if kind == "magnitude" and nm:
        raise NotImplementedError("llm-compressor's MagnitudePruningModifier has no N:M "
                                  "masks (unstructured, channel, filter only)")
    from datasets import Dataset
    from llmcompressor import oneshot

    model, tokenizer = load_hf(args.model_dir)
    structure = f"{nm[0]}:{nm[1]}" if nm else "0:0"
    ignore = ["lm_head"]
    if kind == "sparsegpt":
        from llmcompressor.modifiers.pruning import SparseGPTModifier  # noqa: PLC0415

        recipe = SparseGPTModifier(sparsity=sparsity, mask_structure=structure, block_size=128,
                                   dampening_frac=0.01, targets=["Linear"], ignore=ignore)
    elif kind == "wanda":
        from llmcompressor.modifiers.pruning import WandaPruningModifier  # noqa: PLC0415

        recipe = WandaPruningModifier(sparsity=sparsity, mask_structure=structure,
                                      targets=["Linear"], ignore=ignore)
    elif kind == "magnitude":
        from llmcompressor.modifiers.pruning import MagnitudePruningModifier  # noqa: PLC0415

        # Patch: the modifier is built for training; it writes its masks into the weights
        # only at optimizer steps, which `oneshot` never takes, so the model came back dense.
        # Here the masks are written once, when they are made.
        made = MagnitudePruningModifier.on_start

        def make_and_write(self, state, event, **kwargs):
            made(self, state, event, **kwargs)
            for name in self.parameterized_layers_:
                self.apply_mask_weight(name)

        MagnitudePruningModifier.on_start = make_and_write
        # one-shot: reach the final sparsity at once (start = end = 0, one update)
        recipe = MagnitudePruningModifier(
            targets=r"re:.*(self_attn|mlp)\.\w+_proj$",  # module names, not parameters
            init_sparsity=sparsity, final_sparsity=sparsity, start=0, end=1, update=1,
            mask_structure="unstructured")
    else:
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme  # noqa
        from llmcompressor.modifiers.quantization import GPTQModifier  # noqa: PLC0415

        weights = QuantizationArgs(num_bits=bits, type="int", symmetric=False,
                                   strategy="group" if group_size else "channel",
                                   group_size=group_size)
        scheme = QuantizationScheme(targets=["Linear"], weights=weights)
        recipe = GPTQModifier(config_groups={"group_0": scheme}, ignore=ignore, block_size=128,
                              dampening_frac=0.01, actorder=None)
    data = Dataset.from_dict({"input_ids": windows.tolist(),
                              "attention_mask": [[1] * windows.shape[1]] * len(windows)})

    def compress():
        oneshot(model=model, dataset=data, recipe=recipe, num_calibration_samples=len(windows),
                max_seq_length=windows.shape[1], shuffle_calibration_samples=False,
                output_dir=None)
    return model, compress


# ---------------------------------------------------------------- NVIDIA Model Optimizer


def run_modelopt(args, method, windows, group_size):
    kind, sparsity, nm, bits, _ = method
    if nm != (2, 4) or kind not in ("sparsegpt", "magnitude"):
        raise NotImplementedError("Model Optimizer's sparsity offers 2:4 only (magnitude, sparsegpt)")
    import modelopt.torch.sparsity as mts

    model, _ = load_hf(args.model_dir)
    batches = [{"input_ids": w.unsqueeze(0)} for w in windows]

    def compress():
        mode = "sparsegpt" if kind == "sparsegpt" else "sparse_magnitude"
        config = {"data_loader": batches, "collect_func": lambda batch: batch}
        sparse = mts.sparsify(model, mode=mode, config=config if kind == "sparsegpt" else None)
        mts.export(sparse)
    return model, compress


RUNNERS = {"prunelab": run_prunelab, "reference": run_reference,
           "llmcompressor": run_llmcompressor, "modelopt": run_modelopt}
VERSIONS = {"prunelab": ("prunelab", "transformers", "torch"),
            "reference": ("transformers", "torch"),
            "llmcompressor": ("llmcompressor", "compressed-tensors", "transformers", "torch"),
            "modelopt": ("nvidia-modelopt", "transformers", "torch")}


def group_size_of(model_dir: str, wanted) -> int | None:
    """128 where every prunable input width is a multiple of it, else 64 (smollm2: 576 wide)."""
    if wanted is None:
        return None
    config = json.loads((Path(model_dir) / "config.json").read_text())
    widths = (config["hidden_size"], config["intermediate_size"])
    return 128 if all(w % 128 == 0 for w in widths) else 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=sorted(RUNNERS), required=True)
    parser.add_argument("--method", choices=sorted(METHODS), required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--calib", required=True, help="safetensors file with 'input_ids'")
    parser.add_argument("--calib-source", required=True, help="the text the tokens came from")
    parser.add_argument("--calib-seed", type=int, default=0)
    parser.add_argument("--repos", default=str(HERE / "repos"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    result_path = Path(args.result)
    result: dict = {"system": args.system, "method": args.method}
    try:
        import importlib.metadata as metadata

        import torch
        from safetensors.torch import load_file, save_file

        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        result["versions"] = {}
        for package in VERSIONS[args.system]:
            try:
                result["versions"][package] = metadata.version(package)
            except metadata.PackageNotFoundError:
                result["versions"][package] = "not installed"
        windows = load_file(args.calib)["input_ids"]
        method = METHODS[args.method]
        group_size = group_size_of(args.model_dir, method[4])
        result["group_size"] = group_size
        model, compress = RUNNERS[args.system](args, method, windows, group_size)
        result["threads"] = torch.get_num_threads()
        baseline = status_bytes("VmRSS")  # after imports and model load
        reset_peak()
        cpu = os.times()
        start = time.perf_counter()
        compress()
        result["seconds"] = time.perf_counter() - start
        done = os.times()
        # CPU seconds of all this process's threads: on a shared machine, less noisy than wall time
        result["cpu_seconds"] = (done.user - cpu.user) + (done.system - cpu.system)
        result["peak_rss_net_bytes"] = status_bytes("VmHWM") - baseline
        result["baseline_rss_bytes"] = baseline
        weights = layer_weights(model)
        partial = Path(args.out + ".partial")
        save_file(weights, str(partial))
        partial.replace(args.out)
    except BaseException as exc:  # noqa: BLE001  (the bench reports it as this row)
        lines = [ln for ln in traceback.format_exception_only(exc) if ln.strip()]
        result["error"] = lines[-1].strip()[:300]
        result["not_offered"] = isinstance(exc, NotImplementedError)
        result["traceback"] = traceback.format_exc()[-4000:]
    partial = Path(str(result_path) + ".partial")
    partial.write_text(json.dumps(result, indent=2))
    partial.replace(result_path)
    sys.exit(1 if "error" in result else 0)


if __name__ == "__main__":
    main()
