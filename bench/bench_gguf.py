"""GGUF export of a pruned model: the share of pruned zeros each type keeps, file sizes, and
llama.cpp's perplexity beside prunelab's on the same token windows.

For each type (F16, Q8_0, Q4_0) the model directory is exported, the pruned weights still
exactly zero after the type's codes are counted, and, when llama-cpp-python is installed, the
file is loaded by llama.cpp and scored on the same windows prunelab scores (one window =
`--seqlen` token ids, every position but the first predicted). It is also read back by
transformers' GGUF loader (an independent reader of llama.cpp's format, which dequantizes the
codes and undoes the rotary row order) and scored by prunelab, which checks the file's
tensors without llama.cpp.

    OMP_NUM_THREADS=1 python bench/bench_gguf.py DIR --text python-ref-b
        [--windows 4] [--seqlen 256] [--out-dir /tmp/gguf] [--types F16 Q8_0 Q4_0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from prunelab.data.corpora import eval_windows
from prunelab.evaluate.perplexity import perplexity_of_windows
from prunelab.gguf_export import export_gguf, llama_cpp_perplexity
from prunelab.zoo.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--text", required=True, help="text source (name or file)")
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--types", nargs="*", default=["F16", "Q8_0", "Q4_0"])
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="prunelab-gguf-"))
    loaded = load_model(args.directory)
    windows = eval_windows(loaded, args.text, args.seqlen, args.windows)
    ours = perplexity_of_windows(loaded.model, windows)
    print(f"{args.directory}: prunelab perplexity {ours:.3f} ({args.text}, {args.windows} x "
          f"{args.seqlen} tokens)", flush=True)
    try:
        import llama_cpp  # noqa: F401
        have_llama = True
    except ImportError:
        have_llama = False
        print("llama-cpp-python is not installed: perplexity through llama.cpp skipped")
    print("| type | file MB | pruned zeros kept | nonzero coded to zero | llama.cpp ppl | "
          "GGUF read by transformers, ppl | prunelab ppl (original) |")
    print("|---|---|---|---|---|---|---|")
    for kind in args.types:
        start = time.perf_counter()
        result = export_gguf(args.directory, kind, out_dir / f"{Path(args.directory).name}"
                             f".{kind}.gguf")
        seconds = time.perf_counter() - start
        theirs = llama_cpp_perplexity(result.path, windows, args.threads) if have_llama \
            else float("nan")
        read_back = AutoModelForCausalLM.from_pretrained(result.path.parent,
                                                         gguf_file=result.path.name,
                                                         dtype=torch.float32)
        through_transformers = perplexity_of_windows(read_back, windows)
        del read_back
        print(f"| {kind} | {result.file_bytes / 1e6:.1f} | {result.zeros_kept:,} / "
              f"{result.pruned_zeros:,} ({result.zeros_kept_share:.4%}) | {result.new_zeros:,} "
              f"| {theirs:.3f} | {through_transformers:.3f} | {ours:.3f} |  "
              f"(export {seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
