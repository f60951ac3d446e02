"""Streaming compression of a model larger than memory, and streamed vs in-memory identity.

Default mode: writes a randomly initialised Llama-architecture model with Llama-2-7B's shapes
(hidden 4096, 32 layers, intermediate 11008, vocab 32000; about 6.7B parameters, 27 GB in
fp32) shard by shard, never holding more than one block, with prunelab's byte-level test
tokenizer (its 260 tokens fit the 32000 rows). Then, each in a fresh process: one streamed
dense pass (every block read and run on the calibration windows, then the head), and
Wanda, SparseGPT and GPTQ 4-bit streamed over the model to an output directory. Printed per
method: peak RSS / model size, wall time, time / streamed dense pass, and the achieved
sparsity per layer (summary). Every file written is deleted at the end.

    OMP_NUM_THREADS=2 python bench/bench_stream.py [--layers 32] [--methods wanda,sparsegpt,gptq]
        [--samples 4] [--seqlen 128] [--dir /tmp/prunelab-bench-stream]

`--layers N` writes only N decoder blocks (the shapes of each stay 7B's), for the slow
methods on a busy machine.

    python bench/bench_stream.py --model qwen2.5-coder-0.5b

compresses the real model with each method in memory and streamed, and checks that the
masks (and the weights) are identical (torch.equal).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)
METHODS = {"wanda": dict(method="wanda", sparsity=0.5),
           "sparsegpt": dict(method="sparsegpt", sparsity=0.5),
           "gptq": dict(method="gptq", bits=4, group_size=128)}


def calibration_text(directory: Path) -> Path:
    """Python's own reference text (pydoc_data), always at hand: the calibration source."""
    from pydoc_data.topics import topics

    path = directory / "calibration.txt"
    path.write_text("\n\n".join(topics[key] for key in sorted(topics)))
    return path


def peak_rss_bytes() -> int:
    """This process's peak resident memory (VmHWM starts afresh at exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_random_llama(directory: Path, layers: int, seed: int = 0) -> int:
    """A random Llama-2-7B-shaped checkpoint, one shard per block; returns its bytes."""
    import torch
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from prunelab.testing import tiny_tokenizer

    directory.mkdir(parents=True)
    config = LlamaConfig(**{**LLAMA_7B, "num_hidden_layers": layers}, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0)
    config.architectures = ["LlamaForCausalLM"]
    with init_empty_weights():
        skeleton = LlamaForCausalLM(config)
    shapes = {n: tuple(p.shape) for n, p in skeleton.state_dict().items()}
    groups: list[list[str]] = [[n for n in shapes if not n.startswith("model.layers.")]]
    groups += [[n for n in shapes if n.startswith(f"model.layers.{i}.")] for i in range(layers)]
    # Drawing 6.7B normal numbers takes longer than writing them on a busy 2-core machine:
    # every tensor is instead a window, at a random offset, of one pool of normal numbers.
    generator = torch.Generator().manual_seed(seed)
    largest = max(math.prod(shape) for shape in shapes.values())
    pool = torch.randn(largest + (1 << 22), generator=generator).mul_(0.02)
    weight_map, total = {}, 0
    for number, names in enumerate(groups, start=1):
        shard = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name in names:
            count = math.prod(shapes[name])
            if "norm" in name:
                tensors[name] = torch.ones(shapes[name])
            else:
                offset = int(torch.randint(0, pool.numel() - count + 1, (1,),
                                           generator=generator))
                tensors[name] = pool[offset:offset + count].view(shapes[name]).clone()
        save_file(tensors, str(directory / shard), metadata={"format": "pt"})
        for name, tensor in tensors.items():
            weight_map[name] = shard
            total += tensor.numel() * 4
        del tensors
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return total


def child(args) -> None:
    """One measured run in this (fresh) process; prints one JSON line."""
    import torch

    from prunelab import streaming
    from prunelab.data.calibration import CalibrationConfig

    torch.manual_seed(0)
    calibration = CalibrationConfig(str(args.text), args.samples, args.seqlen, 0)
    start = time.perf_counter()
    record: dict = {"what": args.child}
    if args.child == "dense":
        from prunelab.data.corpora import calibration_windows

        streamed = streaming.StreamedModel(args.model_dir)
        windows = calibration_windows(streamed.loaded, calibration)
        total, count = streaming.stream_windows_nll(streamed, windows, args.batch_size)
        record["nll_per_token"] = total / count
    else:
        spec = dict(METHODS[args.child])
        method = spec.pop("method")
        result = streaming.stream_prune(args.model_dir, args.out, method, calibration=calibration,
                                        batch_size=args.batch_size, progress=False, **spec)
        sparsities = [layer.achieved_sparsity for layer in result.layers]
        record.update(overall_sparsity=result.overall_sparsity, layers=len(sparsities),
                      layer_sparsity_min=min(sparsities), layer_sparsity_max=max(sparsities),
                      per_layer={layer.name: round(layer.achieved_sparsity, 4)
                                 for layer in result.layers})
    record["seconds"] = time.perf_counter() - start
    record["peak_rss_bytes"] = peak_rss_bytes()
    print("RESULT " + json.dumps(record), flush=True)


def run_child(args, what: str, out: Path | None) -> dict:
    command = [sys.executable, __file__, "--child", what, "--model-dir", str(args.model_dir),
               "--samples", str(args.samples), "--seqlen", str(args.seqlen),
               "--batch-size", str(args.batch_size), "--text", str(args.text)]
    if out is not None:
        command += ["--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def sparsity_summary(per_layer: dict) -> str:
    """The achieved sparsity by kind of layer: min-max over the blocks."""
    kinds: dict[str, list[float]] = {}
    for name, value in per_layer.items():
        kinds.setdefault(name.rsplit(".", 1)[-1], []).append(value)
    return ", ".join(f"{kind} {min(v):.4f}-{max(v):.4f}" for kind, v in kinds.items())


def bench_random(args) -> None:
    import psutil

    from prunelab.streaming import free_disk_bytes

    workdir = Path(args.dir)
    if workdir.exists():
        sys.exit(f"{workdir} exists: remove it or pass another --dir")
    params = args.layers * (4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096) \
        + 2 * 32000 * 4096 + 4096
    size = 4 * params
    need = 2 * size + (1 << 30)  # the model, one method's output at a time, slack
    free = free_disk_bytes(workdir)
    if need > free:
        sys.exit(f"needs {need / 1e9:.1f} GB of disk, {free / 1e9:.1f} GB free under "
                 f"{workdir.parent}: use --layers or another --dir")
    methods = [m for m in args.methods.split(",") if m]
    print(f"random Llama-2-7B shapes, {args.layers} layers: {params / 1e9:.2f}B parameters, "
          f"{size / 1e9:.1f} GB fp32; RAM {psutil.virtual_memory().total / 1e9:.1f} GB; "
          f"calibration {args.samples} x {args.seqlen} tokens", flush=True)
    try:
        start = time.perf_counter()
        size = write_random_llama(workdir / "model", args.layers)
        print(f"written shard by shard in {time.perf_counter() - start:.0f} s", flush=True)
        args.model_dir = workdir / "model"
        args.text = args.text or calibration_text(workdir)
        dense = run_child(args, "dense", None)
        print(f"streamed dense pass: {dense['seconds']:.1f} s, peak RSS "
              f"{dense['peak_rss_bytes'] / 1e9:.2f} GB = {dense['peak_rss_bytes'] / size:.3f} "
              f"x model size", flush=True)
        for method in methods:
            out = workdir / f"out-{method}"
            got = run_child(args, method, out)
            shutil.rmtree(out, ignore_errors=True)
            print(f"{method}: peak RSS {got['peak_rss_bytes'] / 1e9:.2f} GB / model "
                  f"{size / 1e9:.1f} GB = {got['peak_rss_bytes'] / size:.3f}; wall "
                  f"{got['seconds']:.0f} s = {got['seconds'] / dense['seconds']:.1f} x streamed "
                  f"dense pass; sparsity {got['overall_sparsity']:.4f} over {got['layers']} "
                  f"layers (per layer {sparsity_summary(got['per_layer'])})", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"deleted {workdir}", flush=True)


def bench_identity(args) -> None:
    import tempfile

    import torch

    from prunelab import compress, streaming
    from prunelab.data.calibration import CalibrationConfig
    from prunelab.zoo.models import ensure_converted, ZOO, load_model

    directory = ensure_converted(ZOO[args.model])
    with tempfile.TemporaryDirectory(dir=args.dir_parent) as tmp:
        text = args.text or calibration_text(Path(tmp))
        calibration = CalibrationConfig(str(text), args.samples, args.seqlen, 0)
        for name in [m for m in args.methods.split(",") if m]:
            spec = dict(METHODS[name])
            method = spec.pop("method")
            loaded = load_model(directory)
            start = time.perf_counter()
            in_memory = compress.prune(loaded, method, calibration=calibration,
                                       batch_size=args.batch_size, progress=False,
                                       keep_masks=True, **spec)
            memory_seconds = time.perf_counter() - start
            start = time.perf_counter()
            out = Path(tmp) / name
            streaming.stream_prune(directory, out, method, calibration=calibration,
                                   batch_size=args.batch_size, progress=False, **spec)
            stream_seconds = time.perf_counter() - start
            streamed = load_model(out)
            ours = dict(streamed.model.named_parameters())
            # the pruned positions as the two models hold them: the weights that are zero
            # (the method's mask and the dense model's own zeros, the same in both)
            masks_equal = all(torch.equal(loaded.model.get_parameter(f"{layer}.weight") == 0,
                                          ours[f"{layer}.weight"] == 0)
                              for layer in in_memory.masks)
            weights_equal = all(torch.equal(p, ours[n])
                                for n, p in loaded.model.named_parameters())
            print(f"{args.model} {name}: streamed vs in-memory weights identical: "
                  f"{weights_equal}; zero patterns identical: {masks_equal} "
                  f"({len(in_memory.layers)} layers; in memory {memory_seconds:.0f} s, "
                  f"streamed {stream_seconds:.0f} s)", flush=True)
            shutil.rmtree(out)
            del loaded, streamed, ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="random-7b",
                        help="random-7b, or a zoo model for the identity check")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dir", default="/tmp/prunelab-bench-stream")
    parser.add_argument("--text", type=Path, default=None,
                        help="calibration text file (default: Python's pydoc topics)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
    elif args.model == "random-7b":
        bench_random(args)
    else:
        args.dir_parent = str(Path(args.dir).parent)
        bench_identity(args)


if __name__ == "__main__":
    main()
