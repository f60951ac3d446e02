"""The scoring engine: log-likelihoods of continuations, greedy generation, rolling log-likelihood.

Multiple choice is the hot path. The choices of one item share a context, so instead of
running "context + choice" once per choice (lm-eval's way), each item becomes ONE packed
row: context, then every choice, with a tree-shaped attention mask (each choice sees the
context and itself, never another choice) and position ids that restart every choice at
the context's end. Several items' rows are padded into one batch: one forward per batch,
and the context is computed once per item. For a 7-way question with a short prompt this
processes roughly half the tokens; with few-shot prompts, several times fewer.

Packing needs a model that honours a 4-D attention mask and explicit position ids (every
HF causal LM in transformers 5 does with eager/sdpa attention), and no sliding window
shorter than the row. Otherwise, and with `packing=False`, each choice is its own padded
sequence. Both paths give the same numbers (tests check to 1e-5).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Progress = Callable[[int], None] | None


@dataclass
class Group:
    """A context and the continuations scored after it (the choices of one item)."""

    context: list[int]
    continuations: list[list[int]]

    @property
    def packed_length(self) -> int:
        return len(self.context) + sum(len(c) for c in self.continuations)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _sliding_window(model) -> int | None:
    config = model.config
    window = getattr(config, "sliding_window", None)
    if getattr(config, "use_sliding_window", True) is False:
        return None
    return window if isinstance(window, int) and window > 0 else None


def can_pack(model) -> bool:
    """Whether a tree mask is honoured: eager or sdpa attention (flash kernels drop 4-D masks),
    the model does not need one input per row (a router's, `prunelab.routing`), and its blocks
    attend at all (a state-space mixer reads every earlier token of the row whatever the
    mask says, so packed continuations would see each other)."""
    if getattr(model, "prunelab_no_packing", False):
        return False
    from prunelab.ssm import is_ssm

    if is_ssm(model):
        return False
    impl = getattr(model.config, "_attn_implementation", "eager") or "eager"
    return impl in ("eager", "sdpa")


def _accepts(model, argument: str) -> bool:
    try:
        return argument in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _keeps_logits(model) -> bool:
    return _accepts(model, "logits_to_keep")


def _forward_logits(model, input_ids, attention_mask, position_ids, first_needed: int):
    """Logits for positions >= first_needed only, where the model allows it (saves the
    vocabulary projection of context tokens; 49k-word vocabularies make that worthwhile)."""
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    offset = 0
    if _keeps_logits(model) and first_needed > 0:
        keep = input_ids.shape[1] - first_needed
        kwargs["logits_to_keep"] = keep
        offset = first_needed
    logits = model(**kwargs).logits
    return logits, offset


def _gather_logprobs(logits, offset, rows, positions, targets) -> torch.Tensor:
    """log p(target | prefix) for each (row, predictor position, target token)."""
    rows = torch.tensor(rows, device=logits.device)
    positions = torch.tensor(positions, device=logits.device) - offset
    picked = logits[rows, positions].float().log_softmax(dim=-1)
    return picked.gather(1, torch.tensor(targets, device=logits.device)[:, None])[:, 0]


@torch.no_grad()
def _score_packed(model, groups: Sequence[Group], pad_id: int) -> list[list[float]]:
    device = _device(model)
    width = max(g.packed_length for g in groups)
    batch = len(groups)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    pos = torch.zeros((batch, width), dtype=torch.long)
    # segment -1 = padding, 0 = context, k = choice k (1-based)
    seg = torch.full((batch, width), -1, dtype=torch.long)
    rows, preds, targets, owners = [], [], [], []
    for b, group in enumerate(groups):
        n_ctx = len(group.context)
        ids[b, :n_ctx] = torch.tensor(group.context)
        pos[b, :n_ctx] = torch.arange(n_ctx)
        seg[b, :n_ctx] = 0
        start = n_ctx
        for k, cont in enumerate(group.continuations):
            end = start + len(cont)
            ids[b, start:end] = torch.tensor(cont)
            pos[b, start:end] = torch.arange(n_ctx, n_ctx + len(cont))
            seg[b, start:end] = k + 1
            # the first choice token is predicted from the last context token
            predictors = [n_ctx - 1] + list(range(start, end - 1))
            rows += [b] * len(cont)
            preds += predictors
            targets += cont
            owners += [(b, k)] * len(cont)
            start = end
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same = (seg[:, :, None] == seg[:, None, :]) | (seg[:, None, :] == 0)
    allowed = causal[None] & same & (seg[:, None, :] >= 0)
    allowed |= torch.eye(width, dtype=torch.bool)[None]  # padding attends to itself: no NaN rows
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    first_needed = min(len(g.context) - 1 for g in groups)
    logits, offset = _forward_logits(model, ids.to(device), mask[:, None].to(device),
                                     pos.to(device), first_needed)
    logprobs = _gather_logprobs(logits, offset, rows, preds, targets).tolist()
    out = [[0.0] * len(g.continuations) for g in groups]
    for (b, k), value in zip(owners, logprobs):
        out[b][k] += value
    return out


@torch.no_grad()
def _score_plain(model, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int) -> list[float]:
    """One right-padded sequence per (context, continuation); causal attention needs no
    position ids for right padding."""
    device = _device(model)
    width = max(len(c) + len(t) for c, t in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(pairs), width), dtype=torch.long)
    rows, preds, targets, owners = [], [], [], []
    for b, (ctx, cont) in enumerate(pairs):
        seq = ctx + cont
        ids[b, : len(seq)] = torch.tensor(seq)
        attn[b, : len(seq)] = 1
        rows += [b] * len(cont)
        preds += list(range(len(ctx) - 1, len(seq) - 1))
        targets += cont
        owners += [b] * len(cont)
    first_needed = min(len(c) - 1 for c, _ in pairs)
    logits, offset = _forward_logits(model, ids.to(device), attn.to(device), None, first_needed)
    logprobs = _gather_logprobs(logits, offset, rows, preds, targets).tolist()
    out = [0.0] * len(pairs)
    for b, value in zip(owners, logprobs):
        out[b] += value
    return out


def score_groups(model, groups: Sequence[Group], *, batch_size: int = 16, pad_id: int = 0,
                 packing: bool | str = "auto", progress: Progress = None) -> list[list[float]]:
    """Summed log-probability of every continuation of every group, in input order.

    `batch_size` counts continuations per forward pass (as lm-eval counts requests); packed
    rows are batched up to the same padded-token budget (batch_size x the longest single
    context + continuation), and a row under half the batch's width starts a new batch.
    Groups run longest first: little padding, memory peaks early.
    `progress(n)` is called with the number of groups finished after each batch.
    """
    for g in groups:
        if not g.context or not g.continuations or any(not c for c in g.continuations):
            raise ValueError("every group needs a non-empty context and non-empty continuations")
    # Asked or not, a model that cannot honour the tree mask is scored in plain rows.
    pack = can_pack(model) and packing in ("auto", True)
    window = _sliding_window(model)
    order = sorted(range(len(groups)), key=lambda i: -groups[i].packed_length)
    results: list[list[float] | None] = [None] * len(groups)
    i = 0
    while i < len(order):
        first = groups[order[i]]
        packed = pack and (window is None or first.packed_length <= window)
        chunk = [order[i]]
        i += 1
        if packed:
            # As many packed rows as fit the padded-token budget of `batch_size` unpacked
            # requests: the same activation memory as the plain path, more items per pass.
            # A row shorter than half the batch's width would be mostly padding, and padding
            # costs as much as text (rows run longest first, so the first row sets the width):
            # it starts the next batch instead. Rolling documents vary tenfold in length.
            longest_request = _request_length(first)
            while i < len(order):
                row = groups[order[i]]
                longest_request = max(longest_request, _request_length(row))
                if ((len(chunk) + 1) * first.packed_length > batch_size * longest_request
                        or 2 * row.packed_length < first.packed_length):
                    break
                chunk.append(order[i])
                i += 1
        else:
            count = len(first.continuations)
            while i < len(order) and count + len(groups[order[i]].continuations) <= batch_size:
                chunk.append(order[i])
                count += len(groups[order[i]].continuations)
                i += 1
        batch = [groups[j] for j in chunk]
        if packed:
            scores = _score_packed(model, batch, pad_id)
        else:
            pairs = [(g.context, c) for g in batch for c in g.continuations]
            flat = []
            for start in range(0, len(pairs), max(1, batch_size)):
                flat += _score_plain(model, pairs[start: start + batch_size], pad_id)
            scores, k = [], 0
            for g in batch:
                scores.append(flat[k: k + len(g.continuations)])
                k += len(g.continuations)
        for j, s in zip(chunk, scores):
            results[j] = s
        if progress:
            progress(len(chunk))
    return results  # type: ignore[return-value]


class ScoreCache:
    """Summed log-probabilities of (context, continuation) pairs already scored on one model
    as it stands; whoever changes the model's weights clears it.

    Levels of a family often ask the same questions: 2, 4 and all 7 options of one item share
    the prompt and their choices are nested. Scored through one cache, the groups asked for at
    once share packed rows where their context is the same and the row grows no longer than
    the longest of them (one row per prompt, holding the union of its nested choices), and any
    pair scored before costs nothing. A pair's value does not depend on the
    other continuations of its row (the tree mask keeps choices apart); only float rounding
    of a differently shaped batch can differ, in the last bits.
    """

    def __init__(self) -> None:
        self._sums: dict[tuple[tuple[int, ...], tuple[int, ...]], float] = {}

    def __len__(self) -> int:
        return len(self._sums)

    def clear(self) -> None:
        self._sums.clear()

    def _merged_rows(self, groups: Sequence[Group]) -> list[Group]:
        """The pairs not yet known, as packed rows: a group's new continuations join a row
        with its context when the row grows no longer than the longest group it serves (so
        nested choice sets share a row, and unrelated continuations after a common prefix,
        such as rolling windows after BOS, do not pile up into one long row)."""
        rows: dict[tuple[int, ...], list[tuple[Group, dict, int]]] = {}
        for group in groups:
            context = tuple(group.context)
            new = [tuple(c) for c in group.continuations
                   if (context, tuple(c)) not in self._sums]
            if not new:
                continue
            candidates = rows.setdefault(context, [])
            for i, (row, known, longest) in enumerate(candidates):
                added = [c for c in dict.fromkeys(new) if c not in known]
                grown = row.packed_length + sum(len(c) for c in added)
                if grown <= max(longest, group.packed_length):
                    row.continuations.extend(list(c) for c in added)
                    known.update(dict.fromkeys(added))
                    candidates[i] = (row, known, max(longest, group.packed_length))
                    break
            else:
                unique = list(dict.fromkeys(new))
                candidates.append((Group(list(context), [list(c) for c in unique]),
                                   dict.fromkeys(unique), group.packed_length))
        return [row for candidates in rows.values() for row, _, _ in candidates]

    def score(self, model, groups: Sequence[Group], *, batch_size: int = 16, pad_id: int = 0,
              packing: bool | str = "auto", progress: Progress = None) -> list[list[float]]:
        """`score_groups`, with every pair not yet known scored in one merged call."""
        merged = self._merged_rows(groups)
        if merged:
            sums = score_groups(model, merged, batch_size=batch_size, pad_id=pad_id,
                                packing=packing)
            for group, values in zip(merged, sums):
                context = tuple(group.context)
                for continuation, value in zip(group.continuations, values):
                    self._sums[(context, tuple(continuation))] = value
        if progress:
            progress(len(groups))
        return [[self._sums[(tuple(g.context), tuple(c))] for c in g.continuations]
                for g in groups]


def _request_length(group: Group) -> int:
    return len(group.context) + max(len(c) for c in group.continuations)


def rolling_windows(tokens: list[int], prefix_id: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """Split a document into (context, continuation) windows that score every token once.

    The first window is conditioned on `prefix_id` (BOS, or EOS where there is no BOS);
    each later window is conditioned on the tokens just before it, so every window has a
    full `max_length` of context where the document is long enough.
    """
    windows = []
    step = max_length - 1
    for start in range(0, len(tokens), step):
        target = tokens[start: start + step]
        context = [prefix_id] + tokens[:start]
        context = context[-(max_length - len(target)):]
        windows.append((context, target))
    return windows


class _StopAtLineEnd:
    """Per-row stop: a row is done at EOS, or at a newline once it has written something.

    A leading newline does not stop a row, so an answer the model starts on a new line is
    still read as the first non-empty line. Stateful: make one per `generate` call.
    """

    def __init__(self, newline_ids: torch.Tensor, blank_ids: torch.Tensor, eos_id: int | None):
        self.newline_ids, self.blank_ids, self.eos_id = newline_ids, blank_ids, eos_id
        self.has_text: torch.Tensor | None = None

    def __call__(self, input_ids, scores, **kwargs):
        last = input_ids[:, -1]
        if self.has_text is None:
            self.has_text = torch.zeros_like(last, dtype=torch.bool)
            self.newline_ids = self.newline_ids.to(last.device)  # once, not once per token
            self.blank_ids = self.blank_ids.to(last.device)
        done = torch.isin(last, self.newline_ids) & self.has_text
        if self.eos_id is not None:
            done |= last == self.eos_id
        self.has_text = self.has_text | ~torch.isin(last, self.blank_ids)
        return done


def line_token_ids(tokenizer) -> tuple[list[int], list[int]]:
    """(ids of tokens whose text holds a newline, ids of whitespace-only tokens), cached."""
    cached = getattr(tokenizer, "_prunelab_line_ids", None)
    if cached is None:
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        cached = ([i for i, t in enumerate(texts) if "\n" in t],
                  [i for i, t in enumerate(texts) if not t.strip()])
        try:
            tokenizer._prunelab_line_ids = cached
        except AttributeError:
            pass
    return cached


def left_padded(sequences: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) [B, longest] with each sequence right-aligned: its last token
    sits in the last column, where generation continues and next-token logits are read."""
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, seq in enumerate(sequences):
        ids[b, width - len(seq):] = torch.tensor(seq)
        mask[b, width - len(seq):] = 1
    return ids, mask


@torch.no_grad()
def generate_greedy(model, tokenizer, prompts: Sequence[list[int]], *, max_new_tokens: int,
                    batch_size: int = 16, pad_id: int = 0, progress: Progress = None) -> list[list[int]]:
    """Greedy continuations of each prompt, stopped at the first newline or EOS.

    Prompts are left-padded into batches of similar length; `generate` derives position
    ids from the attention mask, so padding does not shift positions.
    """
    return generate_and_score(model, tokenizer, prompts, None, max_new_tokens=max_new_tokens,
                              batch_size=batch_size, pad_id=pad_id, progress=progress)[0]


@torch.no_grad()
def generate_and_score(model, tokenizer, prompts: Sequence[list[int]],
                       golds: Sequence[list[int] | None] | None, *, max_new_tokens: int,
                       batch_size: int = 16, pad_id: int = 0, progress: Progress = None,
                       ) -> tuple[list[list[int]], list[float | None]]:
    """`generate_greedy`'s continuations, and the summed log-probability of `golds[i]` (the
    gold answer's tokens) right after `prompts[i]`.

    The gold answer is scored from the keys and values generation already computed for the
    prompt: the cache is cut back to the prompt and only the answer's tokens run, where a
    separate scoring pass would run the whole prompt again (for long-context QA most of the
    cost). None for a row without a gold, or where the model's cache cannot be cut back
    (sliding-window layers, a router's own `generate`): score those apart.
    """
    from transformers import GenerationConfig, GenerationMixin, StoppingCriteriaList

    device = _device(model)
    eos = tokenizer.eos_token_id
    newline_ids, blank_ids = line_token_ids(tokenizer)
    newline, blank = (torch.tensor(ids, dtype=torch.long) for ids in (newline_ids, blank_ids))
    newline_set, blank_set = set(newline_ids), set(blank_ids)
    # Only transformers' own `generate` returns its cache (a router's returns token ids)
    wants_gold = golds is not None and any(golds) and isinstance(model, GenerationMixin)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=pad_id, eos_token_id=eos,
                              return_dict_in_generate=wants_gold)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: list[list[int] | None] = [None] * len(prompts)
    gold_sums: list[float | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        ids, attn = left_padded([prompts[j] for j in chunk], pad_id)
        ids, attn = ids.to(device), attn.to(device)
        width = ids.shape[1]
        stop = _StopAtLineEnd(newline, blank, eos)
        generated = model.generate(input_ids=ids, attention_mask=attn, generation_config=config,
                                   stopping_criteria=StoppingCriteriaList([stop]))
        cache = None
        if not isinstance(generated, torch.Tensor):  # a GenerateOutput
            cache = getattr(generated, "past_key_values", None) or getattr(generated, "cache",
                                                                            None)
            generated = generated.sequences
        for b, j in enumerate(chunk):
            # Rows that stopped early are padded afterwards: cut at EOS or at the first
            # newline that follows some text (the same rule as the stopping criterion).
            new = generated[b, width:].tolist()
            outputs[j] = _cut(new, newline_set, blank_set, eos)
        if wants_gold and cache is not None and any(golds[j] for j in chunk):
            sums = _gold_after_prompt(model, cache, ids, attn, [golds[j] for j in chunk], pad_id)
            if sums is not None:
                for j, value in zip(chunk, sums):
                    gold_sums[j] = value if golds[j] else None
        if progress:
            progress(len(chunk))
    return outputs, gold_sums  # type: ignore[return-value]


def _plain_cache(cache) -> bool:
    """A cache of whole-sequence keys and values in every layer: cutting it back to the
    prompt leaves exactly what a fresh pass over the prompt would compute."""
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer

        return type(cache) is DynamicCache and all(type(layer) is DynamicLayer
                                                   for layer in cache.layers)
    except (ImportError, AttributeError):
        return False


def _gold_after_prompt(model, cache, ids: torch.Tensor, attn: torch.Tensor,
                       golds: Sequence[list[int] | None], pad_id: int) -> list[float] | None:
    """Summed log p(gold | prompt) per row, reusing generation's cache of the left-padded
    prompts `ids`; None when the cache is not a plain one."""
    if not _plain_cache(cache):
        return None
    width = ids.shape[1]
    # Keep the prompt but its last token: feeding that token again yields the logits that
    # predict the gold's first token, so no logits need to survive from generation.
    cache.crop(-(cache.get_seq_length() - (width - 1)))
    longest = max(len(g) for g in golds if g)
    gold_ids = torch.full((len(golds), longest), pad_id, dtype=torch.long)
    gold_mask = torch.zeros_like(gold_ids)
    for b, gold in enumerate(golds):
        if gold:
            gold_ids[b, :len(gold)] = torch.tensor(gold)
            gold_mask[b, :len(gold)] = 1
    gold_ids, gold_mask = gold_ids.to(ids.device), gold_mask.to(ids.device)
    mask = torch.cat([attn, gold_mask], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, width - 1:]
    # recent transformers 5.x name the argument `cache`; earlier 5.x `past_key_values`
    cache_argument = "cache" if _accepts(model, "cache") else "past_key_values"
    logits = model(input_ids=torch.cat([ids[:, -1:], gold_ids], dim=1), attention_mask=mask,
                   position_ids=positions, use_cache=True, **{cache_argument: cache}).logits
    logits = logits[:, :-1].float()
    picked = logits.gather(-1, gold_ids[..., None])[..., 0] - logits.logsumexp(dim=-1)
    return (picked * gold_mask).sum(dim=1).tolist()


def _cut(tokens: list[int], newline: set[int], blank: set[int], eos: int | None) -> list[int]:
    has_text = False
    for n, tok in enumerate(tokens):
        if tok == eos or (tok in newline and has_text):
            return tokens[: n + 1]
        has_text = has_text or tok not in blank
    return tokens
