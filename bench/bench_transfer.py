"""What the transfer settings' mask bookkeeping costs in training speed, and fine-tuning's
peak memory.

    .venv/bin/python bench/bench_transfer.py [--model smollm2-135m] [--steps 12]

Trains the same model on the same batches in alternating rounds with the `sparse` setting
(gradients masked before and weights masked after every step) and the `dense` setting (no
masks), and prints steps per second of each and their ratio, measured in one run, then the
process's peak resident memory against the model's fp32 size (AdamW keeps two moments per
weight, so about 4 x the weights plus activations is expected).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from prunelab.api import prune
from prunelab.recover.loop import TrainConfig
from prunelab.recover.transfer import TransferSetting
from prunelab.zoo.models import load_model


def _round(model, setting, batches, optimizer) -> tuple[float, float]:
    """(seconds of the whole round, seconds inside the setting's own calls)."""
    started, bookkeeping = time.perf_counter(), 0.0
    for batch in batches:
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t = time.perf_counter()
        setting.before_step()
        bookkeeping += time.perf_counter() - t
        torch.nn.utils.clip_grad_norm_(model.parameters(), TrainConfig().max_grad_norm)
        optimizer.step()
        t = time.perf_counter()
        setting.after_step()
        bookkeeping += time.perf_counter() - t
    return time.perf_counter() - started, bookkeeping


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=12, help="steps per setting")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=128)
    args = parser.parse_args()
    loaded = load_model(args.model)
    weights_gb = sum(p.numel() * p.element_size() for p in loaded.model.parameters()) / 1e9
    masks = prune(loaded, "magnitude", 0.5, keep_masks=True, progress=False).masks
    model = loaded.model
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    batches = [torch.randint(0, vocab, (args.batch, args.seqlen), generator=generator)
               for _ in range(args.steps)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    settings = {name: TransferSetting(name, model, masks)
                for name in ("sparse", "freeze", "dense")}
    for setting in settings.values():
        setting.start()
    _round(model, settings["dense"], batches[:1], optimizer)  # warm-up: the optimiser state
    seconds = dict.fromkeys(settings, 0.0)
    inside = dict.fromkeys(settings, 0.0)
    half = max(1, args.steps // 2)
    for chunk in (batches[:half], batches[half:]):  # interleaved, so drift hits all alike
        for name, setting in settings.items():
            total, bookkeeping = _round(model, setting, chunk, optimizer)
            seconds[name] += total
            inside[name] += bookkeeping
    print(f"{args.model}: batch {args.batch} x {args.seqlen} tokens, {args.steps} steps each")
    for name in settings:
        print(f"  {name:7} {args.steps / seconds[name]:.3f} steps/s; its mask calls "
              f"{inside[name] / args.steps * 1e3:6.1f} ms per step = "
              f"{inside[name] / (seconds[name] - inside[name]):+.1%} of the rest of the step")
    for name in ("sparse", "freeze"):
        print(f"  {name}: whole step vs dense {seconds[name] / seconds['dense'] - 1:+.1%} "
              "(aim: < 10%)")
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"  peak RSS {peak_gb:.2f} GB = {peak_gb / weights_gb:.1f} x the fp32 weights "
          f"({weights_gb:.2f} GB)")


if __name__ == "__main__":
    main()
