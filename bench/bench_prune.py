"""Pruning cost, measured in one run: time relative to a dense forward pass, and peak memory.

For each method, a fresh process loads the model, prunes, reports its peak RSS, and times one
dense forward pass over the calibration windows (the same batches the engine uses).
Sequential pruning needs two passes per block (statistics, then the pruned block's outputs),
so the floor of the time ratio is about 2. Memory is compared with the model's size (in its
dtype: fp32 unless `--dtype`), net of the libraries' own footprint (taken after importing this architecture's code), the
engine's one set of block inputs and one batch's forward transients.

    python bench/bench_prune.py [--model smollm2-135m] [--samples 128] [--seqlen 512]
        [--methods magnitude,wanda,sparsegpt,gptq] [--dtype bf16] [--calibration FILE]
        [--text FILE]

A quantizer among the methods (gptq, rtn) runs 4-bit in groups of 128, or of 64 or 32
where 128 does not divide every input width; `--json`
prints each method's record as a JSON line (what `bench/run_all.py` reads).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _status_bytes(field: str) -> int | None:
    """A memory field of /proc/self/status (Linux), in bytes; None where there is none."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """This process's peak resident memory. (ru_maxrss would not do: a child started by
    fork+exec inherits its parent's high-water mark; VmHWM starts afresh at exec.)"""
    peak = _status_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    return _status_bytes("VmRSS") or 0


def reset_peak_rss() -> bool:
    """Restart VmHWM from the current RSS (Linux: writing 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def _import_model_code(model_name: str) -> None:
    """Import everything that loading `model_name` imports, without any weights.

    transformers imports lazily: `import transformers` brings in little, and reading a config
    and building a model imports the modeling, generation and tokenizer code (0.14 GB here).
    That is library code, not the model; building the model on the meta device (no storage)
    imports it before the baseline is taken.
    """
    import tokenizers  # noqa: F401
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    from prunelab.zoo.models import resolve

    target, _ = resolve(model_name)
    with torch.device("meta"):
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(target))


def _fitting_group(model) -> int | None:
    """The largest of 128, 64 and 32 that divides every prunable layer's input width
    (smollm2-135m's 576 takes 64), else per-channel grids."""
    from prunelab import arch

    widths = {arch.weight_matrix(m).shape[1] for m in arch.named_prunable_layers(model).values()}
    return next((g for g in (128, 64, 32) if all(w % g == 0 for w in widths)), None)


def child(model_name: str, method: str, pattern: str | None, samples: int, seqlen: int,
          batch_size: int, with_ppl: bool, calibration_source: str | None = None,
          text: str = "python-ref-b", dtype: str = "fp32") -> dict:
    import torch
    import transformers  # noqa: F401  (part of the baseline: the libraries, not the model)

    import prunelab
    from prunelab.allocator import pruning_allocator
    from prunelab.data.corpora import CalibrationConfig, calibration_windows
    from prunelab.method_catalogue import method_shape

    imports_only = peak_rss_bytes()  # python + torch + the transformers package's top level
    _import_model_code(model_name)
    baseline = peak_rss_bytes()  # ... + the code that loads and runs this architecture
    loaded = prunelab.load_model(model_name, dtype=dtype)
    config = (CalibrationConfig(calibration_source, samples, seqlen, 0) if calibration_source
              else CalibrationConfig(n_samples=samples, seqlen=seqlen, seed=0))
    quantizes = method_shape(method).quantizes
    model_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    rss_loaded = peak_rss_bytes()
    result = prunelab.prune(loaded, method, None if pattern or quantizes else 0.5,
                            pattern=pattern, calibration=config, batch_size=batch_size,
                            progress=False,
                            **({"bits": 4, "group_size": _fitting_group(loaded.model)}
                               if quantizes else {}))
    peak = peak_rss_bytes()  # load + prune: before the timing pass below adds its own
    # The windows of the timing pass (the same the engine drew; magnitude draws none, and
    # tokenizing the corpus only for this pass must not count as its pruning peak).
    windows = calibration_windows(loaded, config)
    # The promises, checked on the real model: each matrix within one weight per row
    # of the request, and (N:M) at least M-N zeros in every group of M inputs.
    worst_rows = 0.0 if quantizes else max(abs(r.zeros_after - result.sparsity * r.numel)
                                           / r.rows for r in result.layers)
    bad_groups = 0
    if pattern:
        n, m = (int(x) for x in pattern.split(":"))
        head = loaded.model.get_output_embeddings()
        for module in loaded.model.modules():
            if isinstance(module, torch.nn.Linear) and module is not head:
                zeros = (module.weight == 0).reshape(module.weight.shape[0], -1, m).sum(-1)
                bad_groups += int((zeros < m - n).sum())
    # The dense forward is timed after pruning, on the same batches: a CPU matmul costs the
    # same whether or not weights are zero, and timing it first would put its transients
    # into the pruning peak.
    # The same pass measures the calibration activations: what one batch's forward through
    # the blocks holds beyond the model (the peak is reset first, where Linux allows it).
    before_forward = current_rss_bytes() if reset_peak_rss() else None
    start = time.perf_counter()
    with torch.no_grad():
        for batch in windows.split(batch_size):
            loaded.model.model(input_ids=batch, use_cache=False)  # the body: what pruning runs
    dense_seconds = time.perf_counter() - start
    forward_transient = peak_rss_bytes() - before_forward if before_forward is not None else 0
    ppl = prunelab.perplexity(loaded, text, 512, 32) if with_ppl else None
    uses_data = result.calibration is not None  # magnitude runs no forward pass at all
    # The engine holds one set of block inputs (each batch's output replaces its input).
    block_io = (windows.numel() * loaded.model.config.hidden_size
                * next(loaded.model.parameters()).element_size() if uses_data else 0)
    activations = block_io + (forward_transient if uses_data else 0)
    return {"method": method, "pattern": pattern, "dtype": dtype, "ppl": ppl, "prune_s": result.seconds,
            "dense_forward_s": dense_seconds, "worst_matrix_deviation_rows": worst_rows,
            "nm_groups_violating": bad_groups, "ratio": result.seconds / dense_seconds,
            "peak_rss_gb": peak / 1e9, "rss_after_load_gb": rss_loaded / 1e9,
            "model_fp32_gb": model_bytes / 1e9, "block_io_gb": block_io / 1e9,
            "forward_transient_gb": forward_transient / 1e9, "rss_ratio": peak / model_bytes,
            "rss_baseline_gb": baseline / 1e9, "rss_imports_only_gb": imports_only / 1e9,
            "rss_ratio_net_of_activations": (peak - baseline - activations) / model_bytes,
            # the definition used before the lazily imported model code was counted as library
            "rss_ratio_net_of_activations_imports_only":
                (peak - imports_only - activations) / model_bytes,
            "allocator": pruning_allocator()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt,wanda:2:4,sparsegpt:2:4")
    parser.add_argument("--no-ppl", action="store_true", help="skip perplexity (32 x 512)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="load and compute the model in this precision")
    parser.add_argument("--calibration", default=None,
                        help="calibration text: name or file (default: prunelab's)")
    parser.add_argument("--text", default="python-ref-b",
                        help="perplexity text: name or file (squad-dev where BIG-bench is at hand)")
    parser.add_argument("--json", action="store_true", help="one JSON record per method")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, _, pattern = args.child.partition(":")
        print(json.dumps(child(args.model, method, pattern or None, args.samples, args.seqlen,
                               args.batch_size, not args.no_ppl, args.calibration, args.text,
                               args.dtype)))
        return

    if not args.no_ppl and not args.json:
        import prunelab

        dense = prunelab.perplexity(prunelab.load_model(args.model, dtype=args.dtype),
                                    args.text, 512, 32)
        print(f"{'dense':14} ppl {dense:8.2f}  ({args.text}, 32 windows x 512)", flush=True)
    rows = []
    for spec in args.methods.split(","):
        cmd = [sys.executable, __file__, "--child", spec, "--model", args.model,
               "--samples", str(args.samples), "--seqlen", str(args.seqlen),
               "--batch-size", str(args.batch_size), "--dtype", args.dtype,
               "--text", args.text] + (["--no-ppl"] if args.no_ppl else []) + (
                   ["--calibration", args.calibration] if args.calibration else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        if args.json:
            print(json.dumps(r), flush=True)
            continue
        ppl = f"ppl {r['ppl']:8.2f}  " if r["ppl"] is not None else ""
        print(f"{spec:14} {ppl}prune {r['prune_s']:7.1f} s  dense forward {r['dense_forward_s']:6.1f} s"
              f"  ratio {r['ratio']:5.2f}  peak RSS {r['peak_rss_gb']:.2f} GB = "
              f"{r['rss_ratio']:.2f} x {r['dtype']} model ({r['model_fp32_gb']:.2f} GB); "
              f"net of python+torch+transformers with this model's code ({r['rss_baseline_gb']:.2f} GB), block I/O "
              f"({r['block_io_gb']:.2f} GB) and one batch's forward "
              f"({r['forward_transient_gb']:.2f} GB): {r['rss_ratio_net_of_activations']:.2f} x "
              f"(net of imports only, {r['rss_imports_only_gb']:.2f} GB: "
              f"{r['rss_ratio_net_of_activations_imports_only']:.2f} x); "
              f"worst matrix off by {r['worst_matrix_deviation_rows']:.3f} weights/row"
              + (f", N:M groups violating: {r['nm_groups_violating']}" if r["pattern"] else ""),
              flush=True)
    if args.json:
        return
    allocators = sorted({r["allocator"] for r in rows})
    print(f"# {args.model}, {args.samples} x {args.seqlen} calibration tokens, batch {args.batch_size}; "
          "aims: wanda ratio <= 2.5, sparsegpt <= 6, RSS <= 1.5 x model + activations; "
          + f"while pruning: {', '.join(allocators)} (prunelab/allocator.py)")


if __name__ == "__main__":
    main()
