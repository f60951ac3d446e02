"""What structured pruning buys on this CPU, measured in one run: prefill tokens/s,
generation tokens/s and weights-file size, dense against structured pruning at given shares.

Each pruned model is saved and loaded back the way a user would (`prunelab.load_model`), so
what is timed is the saved directory. Rounds interleave the models (dense, 20%, 50%, dense,
...) so that load from other processes falls on all of them alike; the median of each is
compared with the dense model's. Sizes are exact; speeds are ratios from this one run.

    python bench/bench_structured.py [--model smollm2-135m] [--ratios 0.2 0.5]
        [--method magnitude-sp] [--rounds 5] [--prompt 512] [--new-tokens 64]

magnitude-sp needs no calibration, and speed depends only on the shapes; `--method flap`
(AL-AM: different sizes per layer) calibrates on 64 × 128 tokens.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def _file_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--method", default="magnitude-sp")
    parser.add_argument("--calibration", default="python-ref-a",
                        help="calibration text (flap only): name or file")
    parser.add_argument("--text", default="python-ref-b", help="prompt text: name or file")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompt", type=int, default=512, help="prefill tokens (batch 1)")
    parser.add_argument("--new-tokens", type=int, default=64, help="greedy tokens generated")
    args = parser.parse_args()

    import torch

    import prunelab
    from prunelab.data.corpora import CalibrationConfig, eval_windows
    from prunelab.structure import model_size

    work = Path(tempfile.mkdtemp(prefix="bench_structured_"))
    dense = prunelab.load_model(args.model)
    models = {"dense": dense}
    sizes = {"dense": (model_size(dense.model), _file_bytes(dense.path))}
    calibration = CalibrationConfig(args.calibration, 64, 128, 0)
    for ratio in args.ratios:
        loaded = prunelab.load_model(args.model)
        result = prunelab.prune(loaded, args.method, ratio, calibration=calibration,
                                progress=False)
        out = prunelab.save(loaded, work / f"{ratio}", result)
        del loaded
        label = f"{args.method} {ratio:.0%}"
        models[label] = prunelab.load_model(out)
        sizes[label] = (model_size(models[label].model), _file_bytes(out))

    prompt = eval_windows(dense, args.text, args.prompt, 1)[:1]
    short = prompt[:, :32]
    prefill = {name: [] for name in models}
    generate = {name: [] for name in models}
    with torch.inference_mode():
        for m in models.values():  # warm up each once
            m.model(input_ids=prompt[:, :64], use_cache=False)
        for _ in range(args.rounds):
            for name, m in models.items():
                start = time.perf_counter()
                m.model(input_ids=prompt, use_cache=False)
                prefill[name].append(prompt.shape[1] / (time.perf_counter() - start))
                start = time.perf_counter()
                m.model.generate(short, max_new_tokens=args.new_tokens,
                                 min_new_tokens=args.new_tokens, do_sample=False,
                                 pad_token_id=m.tokenizer.eos_token_id)
                generate[name].append(args.new_tokens / (time.perf_counter() - start))

    base_prefill = statistics.median(prefill["dense"])
    base_generate = statistics.median(generate["dense"])
    base_params, base_file = sizes["dense"][0]["parameters"], sizes["dense"][1]
    print(f"{args.model} on {torch.get_num_threads()} threads, {args.rounds} rounds "
          f"(medians; ratios to dense from this run)")
    print("| model | parameters | weights file | prefill tok/s | generation tok/s |")
    print("|---|---|---|---|---|")
    for name in models:
        p, g = statistics.median(prefill[name]), statistics.median(generate[name])
        params, file_bytes = sizes[name][0]["parameters"], sizes[name][1]
        print(f"| {name} | {params / 1e6:.1f}M ({params / base_params:.2f}x) | "
              f"{file_bytes / 1e6:.0f} MB ({file_bytes / base_file:.2f}x) | "
              f"{p:.0f} ({p / base_prefill:.2f}x) | {g:.1f} ({g / base_generate:.2f}x) |")


if __name__ == "__main__":
    main()
