"""Divergence from the dense model on a real model: JSD of magnitude/Wanda pruning at several
sparsities, and the time of the divergence pass relative to one perplexity pass.

    python bench/bench_divergence.py --model smollm2-135m --windows 8 --seqlen 512

One process, one model: the dense model is kept as a pristine copy (as the study backend
does) and each pruned model is compared with it on the same windows of `--text` (python-ref-b). The
timing ratio is the best of `--repeats` divergence passes over the best of as many
perplexity passes of the dense model on the same windows, same batch size (the aim is 2.2 or
less: two models, one pass each, plus the per-token divergences).
"""

from __future__ import annotations

import argparse
import copy
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--methods", default="magnitude,wanda")
    parser.add_argument("--sparsities", default="0.3,0.5,0.7")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--calib-seqlen", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: as is); "
                        "1 makes the CPU-time ratio free of idle-thread spinning")
    parser.add_argument("--timing-only", action="store_true", help="skip the pruned models")
    parser.add_argument("--text", default="python-ref-b", help="text: name or file")
    parser.add_argument("--calibration", default="python-ref-a",
                        help="calibration text: name or file")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from prunelab import api
    from prunelab.data.corpora import CalibrationConfig, eval_windows
    from prunelab.evaluate.divergence import windows_divergence
    from prunelab.evaluate.perplexity import perplexity_of_windows
    from prunelab.zoo.models import load_model

    loaded = load_model(args.model)
    pristine = copy.deepcopy(loaded.model)
    windows = eval_windows(loaded, args.text, args.seqlen, args.windows)
    print(f"{args.model}: {args.windows} windows x {args.seqlen} tokens of {args.text}, "
          f"batch {args.batch_size}", flush=True)

    # The identical pair pays for the exact-zero check on every token (each row's logits are
    # compared); a pruned model, the real case, skips it: both are timed.
    from prunelab.zoo.models import LoadedModel

    pruned = LoadedModel(copy.deepcopy(pristine), loaded.tokenizer, loaded.name)
    api.prune(pruned, "magnitude", 0.3, progress=False)
    real_times, real_cpu = [], []
    ppl_times, div_times, ppl_cpu, div_cpu = [], [], [], []
    for _ in range(args.repeats):  # interleaved, so that load from other processes hits both
        start, cpu = time.perf_counter(), time.process_time()
        ppl = perplexity_of_windows(loaded.model, windows, args.batch_size)
        ppl_times.append(time.perf_counter() - start)
        ppl_cpu.append(time.process_time() - cpu)
        start, cpu = time.perf_counter(), time.process_time()
        same = windows_divergence(pristine, loaded.model, windows, args.batch_size)
        div_times.append(time.perf_counter() - start)
        div_cpu.append(time.process_time() - cpu)
        start, cpu = time.perf_counter(), time.process_time()
        windows_divergence(pristine, pruned.model, windows, args.batch_size)
        real_times.append(time.perf_counter() - start)
        real_cpu.append(time.process_time() - cpu)
    print(f"identical models: JSD {same.jsd!r}, KL {same.kl_dense_compressed!r} / "
          f"{same.kl_compressed_dense!r}, top-1 agreement {same.top1_agreement!r}; "
          f"perplexity {ppl:.3f} (divergence pass: {same.perplexity_dense:.3f})")
    print(f"time: perplexity pass {min(ppl_times):.1f} s, divergence pass {min(div_times):.1f} s, "
          f"ratio {min(div_times) / min(ppl_times):.2f} (best of {args.repeats}; all: "
          f"{[round(t, 1) for t in ppl_times]} / {[round(t, 1) for t in div_times]})", flush=True)
    # CPU seconds of this process: what the passes cost, whatever else shares the cores.
    print(f"CPU time: perplexity pass {min(ppl_cpu):.1f} s, divergence pass "
          f"{min(div_cpu):.1f} s, ratio {min(div_cpu) / min(ppl_cpu):.2f}", flush=True)
    print(f"against magnitude 30% (no exact-zero check): divergence pass "
          f"{min(real_times):.1f} s, ratio {min(real_times) / min(ppl_times):.2f}; CPU time "
          f"ratio {min(real_cpu) / min(ppl_cpu):.2f}", flush=True)
    if args.timing_only:
        return

    print("| method | sparsity | perplexity | JSD (nats) | JSD median | JSD 95th pct | "
          "KL(dense‖pruned) | KL(pruned‖dense) | top-1 agreement | divergence s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    calibration = CalibrationConfig(args.calibration, args.calib_samples,
                                    args.calib_seqlen, 0)
    for method in args.methods.split(","):
        for sparsity in (float(s) for s in args.sparsities.split(",")):
            loaded.model.load_state_dict(pristine.state_dict())
            api.prune(loaded, method, sparsity, calibration=calibration, progress=False)
            r = windows_divergence(pristine, loaded.model, windows, args.batch_size)
            q = r.jsd_quantiles
            print(f"| {method} | {sparsity:.0%} | {r.perplexity_compressed:.2f} | {r.jsd:.4f} | "
                  f"{q['q50']:.4f} | {q['q95']:.4f} | {r.kl_dense_compressed:.4f} | "
                  f"{r.kl_compressed_dense:.4f} | {r.top1_agreement:.3f} | {r.seconds:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
