"""Wanda, SparseGPT and GPTQ on a GPU against the same on the CPU, measured in one run.

For each method the model is loaded afresh twice: on the CPU in fp32 (the reference), and in
`--gpu-dtype` with the engine computing on the GPU (`prune(..., device="cuda")`: the model
stays in host memory and one block at a time is on the GPU, its statistics kept there, in
fp32). Printed per method: both pruning times and their ratio, both perplexities, and how
many weights' keep/prune decisions agree (pruning methods). Where torch sees no CUDA GPU it
prints one line saying so and exits 0 (so `make bench-all` goes on).

    python bench/bench_gpu.py [--model qwen2.5-coder-0.5b] [--gpu-dtype bf16]
        [--methods wanda,sparsegpt,gptq] [--calibration SOURCE] [--text SOURCE]
"""

from __future__ import annotations

import argparse
import sys
import time


def run(model: str, method: str, device: str, dtype: str, calibration, text: str,
        seqlen: int, windows: int) -> dict:
    import torch

    import prunelab

    loaded = prunelab.load_model(model, dtype=dtype)
    quantizes = method == "gptq"
    options = {"bits": 4, "group_size": 128} if quantizes else {}
    if device != "cpu":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = prunelab.prune(loaded, method, None if quantizes else 0.5,
                            calibration=calibration, device=device, progress=False,
                            keep_masks=not quantizes, **options)
    if device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    # what pruning held on the GPU: one block, its statistics and the calibration activations
    peak = torch.cuda.max_memory_allocated() / 1e9 if device != "cpu" else None
    if device != "cpu":
        loaded.model.to(device)  # perplexity with the whole model there
    ppl = prunelab.perplexity(loaded, text, seqlen, windows)
    return {"seconds": seconds, "ppl": ppl, "masks": result.masks, "gpu_peak_gb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--gpu-dtype", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--methods", default="wanda,sparsegpt,gptq")
    parser.add_argument("--calibration", default=None, help="calibration text source "
                        "(default: prunelab's)")
    parser.add_argument("--text", default=None, help="perplexity text source (default: "
                        "prunelab's)")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--windows", type=int, default=32)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no GPU here: torch sees no CUDA device, so there is no GPU-vs-CPU figure to "
              "measure")
        sys.exit(0)
    from prunelab import defaults
    from prunelab.data.corpora import CalibrationConfig

    calibration = CalibrationConfig(args.calibration or defaults.CALIBRATION_SOURCE,
                                    args.samples, args.seqlen, 0)
    text = args.text or defaults.EVAL_SOURCE
    print(f"{args.model} on {torch.cuda.get_device_name()} ({args.gpu_dtype}, one block at a "
          f"time) against {torch.get_num_threads()} CPU threads (fp32); calibration "
          f"{args.samples} x {args.seqlen}, perplexity {args.windows} x {args.seqlen}",
          flush=True)
    for method in args.methods.split(","):
        cpu = run(args.model, method, "cpu", "fp32", calibration, text, args.seqlen,
                  args.windows)
        torch.cuda.reset_peak_memory_stats()
        gpu = run(args.model, method, "cuda", args.gpu_dtype, calibration, text, args.seqlen,
                  args.windows)
        line = (f"{method}: CPU {cpu['seconds']:.1f} s, GPU {gpu['seconds']:.1f} s, "
                f"speed-up {cpu['seconds'] / gpu['seconds']:.1f}x; perplexity CPU "
                f"{cpu['ppl']:.3f}, GPU {gpu['ppl']:.3f}; GPU peak while pruning "
                f"{gpu['gpu_peak_gb']:.2f} GB")
        if cpu["masks"]:
            same = sum(int((cpu["masks"][k] == gpu["masks"][k]).sum()) for k in cpu["masks"])
            total = sum(m.numel() for m in cpu["masks"].values())
            line += f"; masks agree on {same / total:.4%}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
