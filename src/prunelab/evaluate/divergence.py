"""How far a compressed model's next-token distributions moved from the dense model's.

Khanal & Capone (2024) found that perplexity is kept by 50% pruning while downstream tasks
degrade, and that the Jensen-Shannon divergence of next-token distributions from the dense
model tracks the damage better. This module measures, per predicted token of an evaluation
text (the same windows as `prunelab.evaluate.perplexity`: every position but the last of a
window):

- JSD(P, Q) = ½ KL(P‖M) + ½ KL(Q‖M), M = ½(P + Q), in **nats** (bounded by ln 2 ≈ 0.693;
  divide by ln 2 for bits);
- KL(P_dense‖P_compressed) and KL(P_compressed‖P_dense), in nats;
- top-1 agreement: whether both models' most likely next token is the same;

and reports the mean over tokens, quantiles and a histogram of the per-token JSD (for plots),
and both models' perplexity on the same tokens (free: the log-probabilities are at hand).

Memory: one batch of windows goes through both models; the decoder's last hidden states are
projected onto the vocabulary a slice of tokens at a time (`_token_chunk`), so no more than
about `MAX_LOGIT_ELEMENTS` logits per model exist at once, whatever the vocabulary (Gemma's is
262k). Numerics: log-softmax in float32; the mixture's log-density is taken relative to
each side through the log-ratio d (`token_divergences`), so KL is exactly 0 where the
distributions agree and JSD is set to exactly 0 for identical logits: identical models give
JSD = KL = 0 and agreement 1 exactly.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prunelab import defaults
from prunelab.errors import PrunelabError

LN2 = math.log(2.0)
# Logits of at most this many (token, vocabulary entry) pairs per model at once: 2^24 float32
# values are 64 MiB, so the pass stays far below the model's own memory on any vocabulary.
MAX_LOGIT_ELEMENTS = 1 << 24
# The per-entry arithmetic runs on slices of about this many logits, which stay in the CPU's
# cache between its ~20 passes (a third faster than whole chunks on smollm2's 49k vocabulary);
# the head itself is applied to whole chunks, so its weight is read once per chunk.
CACHE_ELEMENTS = 1 << 20
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
# Per-token JSD histogram: exact zeros apart, log-spaced bins from 1e-6 nats up to ln 2.
HISTOGRAM_EDGES = tuple([0.0] + [10.0 ** e for e in range(-6, 0)] + [0.2, 0.4, LN2])


@dataclass
class DivergenceResult:
    """Means over `tokens` predicted tokens; divergences in nats."""

    jsd: float
    kl_dense_compressed: float  # KL(P_dense ‖ P_compressed)
    kl_compressed_dense: float  # KL(P_compressed ‖ P_dense)
    top1_agreement: float
    tokens: int
    perplexity_dense: float
    perplexity_compressed: float
    jsd_quantiles: dict[str, float] = field(default_factory=dict)  # "q50" -> nats
    jsd_histogram: dict[str, list] = field(default_factory=dict)  # edges, counts
    units: str = "nats"
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def check_compatible(dense, compressed) -> None:
    """Both `LoadedModel`s must share one tokenizer and one output vocabulary."""
    v_dense = _vocab_size(dense.model)
    v_comp = _vocab_size(compressed.model)
    if v_dense != v_comp:
        raise PrunelabError(
            f"the models predict over different vocabularies ({v_dense} vs {v_comp} entries)",
            "compare a compressed model with the dense model it was made from")
    if dense.tokenizer.get_vocab() != compressed.tokenizer.get_vocab():
        raise PrunelabError("the models have different tokenizers (their vocabularies differ)",
                            "compare a compressed model with the dense model it was made from")


def _vocab_size(model) -> int:
    head = model.get_output_embeddings()
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


def _token_chunk(vocab: int, max_elements: int = MAX_LOGIT_ELEMENTS) -> int:
    return max(1, max_elements // max(vocab, 1))


def _hidden_states(model, batch: torch.Tensor) -> torch.Tensor | None:
    """The decoder's final hidden states [B, T, H] (after its final norm), or None when this
    architecture's output head is not a plain projection of them."""
    base = getattr(model, "base_model", None)
    head = model.get_output_embeddings()
    if base is None or base is model or not isinstance(head, torch.nn.Linear):
        return None
    if any(getattr(model.config, name, None) not in (None, 1, 1.0)
           for name in ("logit_scale", "logits_scaling", "output_multiplier_scale")):
        return None  # the head rescales its logits: use the model's own forward
    out = base(input_ids=batch, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return hidden


def _logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Float32 logits of a slice of hidden states, as the model's own forward computes them."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:  # Gemma 2/3 squash logits through tanh
        logits = torch.tanh(logits / cap) * cap
    return logits


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_v a[n, v] · b[n, v] for every row n (vecdot: one fused pass, no [N, V] temporary)."""
    return torch.linalg.vecdot(a, b)


def _probabilities(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax, log-softmax and top-1 index of [N, V] logits in float32, with one
    exponential per entry (log_softmax then exp would take two) and one max pass for both
    the shift and the top-1 (a separate argmax costs more than the max)."""
    logits = logits.float()
    top_value, top = logits.max(-1, keepdim=True)
    shifted = logits - top_value
    p = shifted.exp()
    total = p.sum(-1, keepdim=True)
    return p.div_(total), shifted.sub_(total.log()), top.squeeze(-1)


def token_divergences(logits_p: torch.Tensor, logits_q: torch.Tensor,
                      targets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per row of [N, V] logits: JSD, KL(P‖Q), KL(Q‖P) in nats, and top-1 agreement; with
    `targets` [N], each model's log-probability of its row's target too.

    With d = log Q − log P, S = P + Q and g = log(S/2) − log P (the mixture's log-density
    relative to P), JSD = ½ [Σ q·d − Σ s·g], KL(P‖Q) = −Σ p·d, KL(Q‖P) = Σ q·d. That costs
    three transcendentals per entry (two exponentials, one logarithm) and three row dot
    products, computed in place where the inputs are no longer needed. g stays centred (near 0
    for similar models), so a small JSD is not lost to cancellation. Where p + q underflows
    to 0 (a collapsed model's extreme logits) the slice is redone with g = softplus(d) − ln 2,
    which cannot underflow. Rows whose logits are identical are set to exactly 0; elsewhere
    the float32 error is about 1e-7 nats.
    """
    p, log_p, top_p = _probabilities(logits_p)
    q, log_q, top_q = _probabilities(logits_q)
    out = {"agree": (top_p == top_q).float()}
    if targets is not None:
        t = targets.unsqueeze(1)
        out["target_logp_p"] = log_p.gather(1, t).squeeze(1)
        out["target_logp_q"] = log_q.gather(1, t).squeeze(1)
    d = log_q.sub_(log_p)  # log_q is not needed again
    q_d, p_d = _row_dot(q, d), _row_dot(p, d)
    s = p.add_(q)  # nor p alone
    g = log_p.neg_().add_(s.log()).sub_(LN2)  # log(s) − ln 2 − log p, in log_p's storage
    s_g = _row_dot(s, g)
    if not all(bool(torch.isfinite(x).all()) for x in (q_d, p_d, s_g)):
        # A masked vocabulary entry (logit −inf) has probability 0 and contributes nothing
        # (0 × inf would make the sums NaN); p + q may also have underflowed. Rare: redone
        # from the logits only when it happens.
        p, log_p, _ = _probabilities(logits_p)
        q, log_q, _ = _probabilities(logits_q)
        d = log_q - log_p
        d = torch.where(torch.isfinite(d), d, torch.zeros_like(d))
        g = F.softplus(d).sub_(LN2)
        q_d, p_d = _row_dot(q, d), _row_dot(p, d)
        # two sums, added in float64: rows here are far apart, and Σ q·g ≈ Σ q·d is large
        s_g = _row_dot(p, g).double() + _row_dot(q, g).double()
    jsd_rows = 0.5 * (q_d.double() - s_g.double())
    # Identical logits give d = 0 exactly; only rows already within float error of 0 are
    # compared entry by entry, so the check costs nothing on models that differ.
    identical = torch.zeros_like(jsd_rows, dtype=torch.bool)
    near = torch.nonzero(jsd_rows.abs() < 1e-6).flatten()
    if near.numel():
        identical[near] = (logits_p[near] == logits_q[near]).all(-1)
    out["jsd"] = torch.where(identical, torch.zeros_like(jsd_rows), jsd_rows).clamp(0.0, LN2)
    out["kl_pq"] = (-p_d).clamp_min(0.0)
    out["kl_qp"] = q_d.clamp_min(0.0)
    return out


@torch.no_grad()
def dense_hidden_states(dense_model, windows: torch.Tensor,
                        batch_size: int = 1) -> list[torch.Tensor] | None:
    """The dense model's final hidden states for each batch of `windows`, to reuse across the
    compressed models of a study: tokens × hidden floats (9 MB for 8 × 512 tokens of
    smollm2), where its next-token distributions would be tokens × vocabulary (2 GB for
    Gemma's). None when the head is not a plain projection (then each pass runs it whole)."""
    device = next(dense_model.parameters()).device
    out = []
    for batch in windows.split(batch_size):
        hidden = _hidden_states(dense_model, batch.to(device))
        if hidden is None:
            return None
        out.append(hidden)
    return out


@torch.no_grad()
def windows_divergence(dense_model, compressed_model, windows: torch.Tensor,
                       batch_size: int = 1, progress: bool = False,
                       max_logit_elements: int = MAX_LOGIT_ELEMENTS,
                       dense_hidden: list[torch.Tensor] | None = None) -> DivergenceResult:
    """Divergence of `compressed_model` from `dense_model` over token windows [N, T].

    `dense_hidden` (from `dense_hidden_states` on the same windows and batch size) spares
    the dense model's pass: only its output head runs."""
    start = time.perf_counter()
    vocab = _vocab_size(dense_model)
    chunk = _token_chunk(vocab, max_logit_elements)
    device = next(dense_model.parameters()).device
    # The two models may sit on different devices (a dense copy kept on the CPU, say): each
    # runs where it is, and the compressed model's logits join the dense ones.
    device_q = next(compressed_model.parameters()).device
    jsd_all: list[torch.Tensor] = []
    sums = {"kl_pq": 0.0, "kl_qp": 0.0, "agree": 0.0, "nll_p": 0.0, "nll_q": 0.0}
    batches = windows.split(batch_size)
    if dense_hidden is not None and len(dense_hidden) != len(batches):
        raise ValueError("dense_hidden was computed for other windows or another batch size")
    for k, batch in enumerate(tqdm(batches, desc="divergence", unit="batch",
                                   disable=not progress, file=sys.stderr, dynamic_ncols=True)):
        batch = batch.to(device)
        targets = batch[:, 1:].reshape(-1)
        h_p = dense_hidden[k] if dense_hidden is not None else _hidden_states(dense_model, batch)
        h_q = (_hidden_states(compressed_model, batch.to(device_q)) if h_p is not None
               else None)
        if h_p is None or h_q is None:  # an unusual head: whole-window logits, as a fallback
            full_p = dense_model(input_ids=batch, use_cache=False).logits[:, :-1]
            full_q = compressed_model(input_ids=batch.to(device_q),
                                      use_cache=False).logits[:, :-1].to(device)
            pieces = [(full_p.reshape(-1, full_p.shape[-1])[i:i + chunk],
                       full_q.reshape(-1, full_q.shape[-1])[i:i + chunk], i)
                      for i in range(0, targets.numel(), chunk)]
        else:
            h_p = h_p[:, :-1].reshape(-1, h_p.shape[-1])
            h_q = h_q[:, :-1].reshape(-1, h_q.shape[-1])
            pieces = ((_logits(dense_model, h_p[i:i + chunk]),
                       _logits(compressed_model, h_q[i:i + chunk]).to(device), i)
                      for i in range(0, targets.numel(), chunk))
        for logits_p, logits_q, i in _sliced(pieces, _token_chunk(vocab, CACHE_ELEMENTS)):
            out = token_divergences(logits_p, logits_q, targets[i:i + logits_p.shape[0]])
            jsd_all.append(out["jsd"].cpu())
            sums["kl_pq"] += float(out["kl_pq"].double().sum())
            sums["kl_qp"] += float(out["kl_qp"].double().sum())
            sums["agree"] += float(out["agree"].sum())
            sums["nll_p"] -= float(out["target_logp_p"].double().sum())
            sums["nll_q"] -= float(out["target_logp_q"].double().sum())
    jsd = torch.cat(jsd_all).double() if jsd_all else torch.zeros(0, dtype=torch.float64)
    n = jsd.numel()
    if n == 0:
        raise PrunelabError("no tokens to compare", "use windows of 2 tokens or more")
    quantiles = torch.quantile(jsd, torch.tensor(QUANTILES, dtype=torch.float64))
    return DivergenceResult(
        jsd=float(jsd.mean()), kl_dense_compressed=sums["kl_pq"] / n,
        kl_compressed_dense=sums["kl_qp"] / n, top1_agreement=sums["agree"] / n, tokens=n,
        perplexity_dense=math.exp(sums["nll_p"] / n),
        perplexity_compressed=math.exp(sums["nll_q"] / n),
        jsd_quantiles={f"q{round(q * 100):02d}": float(v) for q, v in zip(QUANTILES, quantiles)}
        | {"max": float(jsd.max())},
        jsd_histogram=histogram(jsd),
        seconds=round(time.perf_counter() - start, 3))


def _sliced(pieces, rows: int):
    """(logits_p, logits_q, first token) pieces cut into slices of at most `rows` tokens."""
    for logits_p, logits_q, i in pieces:
        for j in range(0, logits_p.shape[0], rows):
            yield logits_p[j:j + rows], logits_q[j:j + rows], i + j


def histogram(values: torch.Tensor) -> dict[str, list]:
    """Counts of per-token JSD: exact zeros, then the bins between HISTOGRAM_EDGES."""
    zeros = int((values == 0).sum())
    rest = values[values > 0]
    edges = torch.tensor(HISTOGRAM_EDGES, dtype=torch.float64)
    # bucketize: bin k holds edges[k-1] < v <= edges[k]; v ≤ 1e-6 falls in the first bin
    idx = torch.bucketize(rest, edges[1:], right=False).clamp_max(len(edges) - 2)
    counts = torch.bincount(idx, minlength=len(edges) - 1).tolist()
    return {"edges": list(HISTOGRAM_EDGES), "zeros": zeros, "counts": counts}


def divergence(dense, compressed, source: str = defaults.EVAL_SOURCE,
               seqlen: int = defaults.EVAL_SEQLEN,
               n_windows: int | None = defaults.EVAL_WINDOWS, batch_size: int = 1,
               progress: bool = False) -> DivergenceResult:
    """JSD, KL both ways and top-1 agreement of `compressed` against `dense` (both
    `prunelab.LoadedModel`s sharing one tokenizer) over the perplexity windows of `source`."""
    from prunelab.data.corpora import eval_windows

    check_compatible(dense, compressed)
    windows = eval_windows(dense, source, seqlen, n_windows)
    return windows_divergence(dense.model, compressed.model, windows, batch_size, progress)
