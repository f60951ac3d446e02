"""Bytes on disk of a pruned model, dense against compact (prunelab.compact), in one run.

smollm2-135m pruned by magnitude (the sizes depend only on how many weights are kept and
where, not on which method chose them) at 50% unstructured and 2:4; each written as dense
safetensors and as compact checkpoints in fp32 and bf16 values, and, after 4-bit RTN of the
pruned weights (zero is on the grid, so pruned weights stay exactly zero), as the packed
compressed-tensors file (4-bit codes of every weight) against the compact one (codes of the
kept weights only). Every file is written and its size read back with `stat`; each compact
file is loaded again and compared tensor by tensor with the model it came from.

The embeddings (tied to the head) are not pruned and stay dense, so the whole file shrinks
less than the pruned matrices: both ratios are printed.

    python bench/bench_compact.py [--model smollm2-135m] [--group-size 64] [--cases 50,2:4]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

import prunelab
from prunelab import compact, compact_dirs


def file_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def prunable_bytes(directory: Path, names: list[str]) -> int:
    """Bytes of the prunable matrices' tensors in a directory's weights (data only)."""
    from safetensors import safe_open

    total = 0
    for path in directory.glob("*.safetensors"):
        with safe_open(path, "pt") as handle:
            for key in handle.keys():
                if key.rsplit(".", 1)[0] in names:
                    tensor = handle.get_tensor(key)
                    total += tensor.numel() * tensor.element_size()
    return total


def same_weights(model, directory: Path, dtype: torch.dtype) -> bool:
    reloaded = prunelab.load_model(directory, dtype=dtype).model.state_dict()
    original = model.state_dict()
    return all(torch.equal(original[k].to(dtype) if original[k].is_floating_point()
                           else original[k], reloaded[k]) for k in original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", default="50,2:4", help="which prunings: 50 (unstructured), "
                        "2:4, or both (comma-separated)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    base = prunelab.load_model(args.model)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-compact-") as scratch:
        root = Path(scratch)
        cases = [c for c in (("50% unstructured", 0.5, None), ("2:4", None, "2:4"))
                 if c[0].split("%")[0].split()[0] in args.cases.split(",")]
        for label, sparsity, pattern in cases:
            loaded = copy.copy(base)
            loaded.model = copy.deepcopy(base.model)
            result = prunelab.prune(loaded, "magnitude", sparsity, pattern=pattern,
                                    progress=False)
            key = label.split()[0].replace("%", "")
            dense = prunelab.save(loaded, root / f"{key}-dense", result)
            names = compact.prunable_names(dense)
            for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                layouts = ["prunelab"] + (["compressed-tensors"] if pattern else [])
                dense_bytes = None
                for layout in layouts:
                    out = root / f"{key}-{dtype_name}-{layout}"
                    compact_dirs.pack(dense, out, layout=layout,
                                 dtype="keep" if dtype_name == "fp32" else dtype_name)
                    if dense_bytes is None:  # the dense file in this dtype, written for real
                        unpacked = root / f"{key}-{dtype_name}-dense"
                        compact_dirs.unpack(out, unpacked)
                        dense_bytes = (file_bytes(unpacked), prunable_bytes(unpacked, names))
                    exact = same_weights(loaded.model, out, dtype)
                    rows.append((label, dtype_name, layout, dense_bytes,
                                 (file_bytes(out), prunable_bytes(out, names)), exact))
            # 4-bit codes of the pruned weights: packed dense codes against compact codes
            quantized = prunelab.quantize(loaded, "rtn", bits=4, group_size=args.group_size,
                                          symmetric=True, progress=False)
            zeros_kept = min(float((layer.weight == 0).float().mean())
                             for layer in prunelab.arch.named_prunable_layers(
                                 loaded.model).values())
            packed = prunelab.save(loaded, root / f"{key}-ct4", quantized,
                                   format="compressed-tensors")
            compact4 = prunelab.save(loaded, root / f"{key}-c4", quantized, format="compact")
            exact = same_weights(loaded.model, compact4, torch.float32)
            rows.append((label, f"4-bit g{args.group_size}", "prunelab codes",
                         (file_bytes(packed), prunable_bytes(packed, names)),
                         (file_bytes(compact4), prunable_bytes(compact4, names)), exact))
            print(f"{label}: least share of zeros in a prunable matrix after 4-bit RTN "
                  f"{zeros_kept:.4f}", flush=True)
    print()
    print("| pattern | values | compact layout | dense file MB | compact file MB | whole file "
          "ratio | prunable dense MB | prunable compact MB | prunable ratio | bit-exact |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, values, layout, (dense, dense_p), (small, small_p), exact in rows:
        baseline = "packed 4-bit (compressed-tensors)" if "codes" in layout else "dense"
        print(f"| {label} | {values} | {layout} (vs {baseline}) | {dense / 1e6:.1f} | "
              f"{small / 1e6:.1f} | {dense / small:.3f}x | {dense_p / 1e6:.1f} | "
              f"{small_p / 1e6:.1f} | {dense_p / small_p:.3f}x | {'yes' if exact else 'NO'} |")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
