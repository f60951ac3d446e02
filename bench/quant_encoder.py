"""Weight quantization of a sentence encoder with true fp32 weights (minilm-l6), RTN against
GPTQ, judged by what a sentence encoder is for: its sentence embeddings.

The zoo's decoders were already 4-bit GGUF before prunelab saw them, so their 4-bit rows say
little about quantizing a real checkpoint; all-MiniLM-L6-v2 is stored in fp32. For each bit
width and grid the model's original weights are restored, quantized with the registered
method (`prunelab.prune`, as `prunelab quantize` does; GPTQ calibrated on 128 windows of 128
tokens of squadshifts-new_wiki), and 1,000 English sentences (multiemo-en, fixed seed) are
embedded the model's way (mean of the last hidden states over tokens, L2-normalised).
Reported: the mean cosine similarity of each sentence's embedding to the fp32 one, and the
share of sentences whose nearest neighbour among the others is the same as with fp32
(retrieval agreement, the use these embeddings are made for).

    python bench/quant_encoder.py [--runs rtn:8:pc,gptq:4:128,...] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time

DEFAULT_RUNS = ",".join(f"{m}:{b}:{g}" for b in (8, 6, 4, 3, 2) for g in ("pc", "128")
                        for m in ("rtn", "gptq"))


def embed(model, tokenizer, sentences: list[str], batch_size: int = 64):
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(sentences), batch_size):
            batch = tokenizer(sentences[start:start + batch_size], padding=True,
                              truncation=True, max_length=128, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out)


def nearest(embeddings):
    import torch

    similarity = embeddings @ embeddings.T
    similarity.fill_diagonal_(-float("inf"))
    return similarity.argmax(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--runs", default=DEFAULT_RUNS)
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--log", default="quant_encoder.jsonl")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    import prunelab
    from prunelab.data.corpora import CalibrationConfig
    from prunelab.tasks.classification import classification_items
    from prunelab.tasks.base import stable_hash

    loaded = prunelab.load_model(args.model)
    items = sorted(classification_items("multiemo-en"), key=lambda it: stable_hash(0, it.id))
    sentences = [it.input for it in items[:args.sentences]]
    original = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    reference = embed(loaded.model, loaded.tokenizer, sentences)
    reference_nearest = nearest(reference)
    calibration = CalibrationConfig(n_samples=args.samples, seqlen=args.seqlen, seed=0)
    rows = []
    for run in args.runs.split(","):
        method, bits, group = run.split(":")
        loaded.model.load_state_dict(original)
        options = {"bits": int(bits), "group_size": None if group == "pc" else int(group)}
        start = time.perf_counter()
        prunelab.prune(loaded, method, calibration=calibration if method == "gptq" else None,
                       progress=False, **options)
        seconds = time.perf_counter() - start
        quantized = embed(loaded.model, loaded.tokenizer, sentences)
        cosine = float((quantized * reference).sum(-1).mean())
        agreement = float((nearest(quantized) == reference_nearest).float().mean())
        row = {"run": run, "method": method, "bits": int(bits), "group": group,
               "cosine": round(cosine, 5), "nn_agreement": round(agreement, 4),
               "seconds": round(seconds, 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(args.log, "a") as handle:
            handle.write(json.dumps(row) + "\n")
    print(f"\n{args.model}: {len(sentences)} multiemo-en sentences, mean-pooled, L2-normalised; "
          f"GPTQ calibration {args.samples} x {args.seqlen} tokens of squadshifts-new_wiki")
    print("| bits | grid | RTN cosine to fp32 | GPTQ cosine | RTN NN agreement | GPTQ NN agreement |")
    print("|---|---|---|---|---|---|")
    by = {(r["method"], r["bits"], r["group"]): r for r in rows}
    for bits in sorted({r["bits"] for r in rows}, reverse=True):
        for group in ("pc", "128"):
            rtn, gptq = by.get(("rtn", bits, group)), by.get(("gptq", bits, group))
            if not rtn and not gptq:
                continue

            def cell(r, key):
                return f"{r[key]:.4f}" if r else "—"

            grid = "per channel" if group == "pc" else f"g{group}"
            print(f"| {bits} | {grid} | {cell(rtn, 'cosine')} | {cell(gptq, 'cosine')} | "
                  f"{cell(rtn, 'nn_agreement')} | {cell(gptq, 'nn_agreement')} |")


if __name__ == "__main__":
    main()
