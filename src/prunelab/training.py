"""Train a small model here, from scratch, and keep it in the cache like a zoo model.

No pretrained state-space model can be installed on these machines, so one is trained: a small
Mamba-2 with the SmolLM2 tokenizer, and a Llama of about the same size trained the same way
on the same tokens (its twin), so that pruning results can be compared like for like.

The budget is a fixed number of optimizer steps of fixed-size batches, drawn from the text in
one seeded order: both twins see exactly the same tokens, whatever each step costs. The
result is saved to `$PRUNELAB_HOME/models/<name>/` with a `zoo.json` that records the recipe,
the final training loss and the perplexity on the evaluation text; `prunelab models` lists it
as trained here.
"""

from __future__ import annotations

import ast
import json
import math
import random
import re
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prunelab.errors import PrunelabError
from prunelab.paths import atomic_dir, cache_dir

if TYPE_CHECKING:  # torch is imported where it is used: the CLI checks a recipe without it
    import torch

# A text source that needs no download: the docstrings of Python's own standard library.
DOCSTRINGS_SOURCE = "python-docstrings"
ARCHITECTURES = ("mamba2", "mamba", "llama")
TEMPLATE_TOKENIZER = "smollm2-135m"  # whose tokenizer the trained models use


@dataclass
class TrainRecipe:
    architecture: str = "mamba2"
    hidden: int = 256
    layers: int | None = None  # None: about the size of the other architectures' default
    state: int = 32  # SSM state size (d_state)
    head_dim: int = 32  # Mamba-2 head size; Llama uses 64
    steps: int = 150
    batch: int = 4
    seqlen: int = 256
    # The share of positions whose next-token loss is computed each step: the output layer over
    # SmolLM2's 49152 tokens costs most of a step at this size, so a random quarter is scored.
    scored: float = 0.25
    max_minutes: float | None = None  # stop early when training takes longer (recorded)
    lr: float = 3e-3
    seed: int = 0
    sources: list[str] = field(default_factory=lambda: [DOCSTRINGS_SOURCE])
    eval_source: str | None = None
    eval_windows: int = 16

    def check(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise PrunelabError(f"cannot train a {self.architecture!r} model",
                                f"use one of {', '.join(ARCHITECTURES)}")
        for key in ("hidden", "steps", "batch", "seqlen", "state", "head_dim", "eval_windows"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise PrunelabError(f"{key}={value} must be a positive whole number",
                                    f"give --{key.replace('_', '-')} 1 or more")
        if self.layers is not None and self.layers < 1:
            raise PrunelabError(f"layers={self.layers} must be 1 or more", "give --layers 1 or more")
        if self.architecture == "mamba2" and (2 * self.hidden) % self.head_dim:
            raise PrunelabError(f"Mamba-2's inner width {2 * self.hidden} does not split into "
                                f"heads of {self.head_dim}",
                                "give a --head-dim that divides twice --hidden")
        if not 0 < self.scored <= 1:
            raise PrunelabError(f"scored={self.scored} is outside (0, 1]",
                                "give the share of positions scored, e.g. 0.25")
        if not self.lr > 0:
            raise PrunelabError(f"learning rate {self.lr} must be above 0", "give e.g. --lr 3e-3")


def check_name(name: str) -> None:
    """A cache name: letters, digits, ".", "_" and "-", not starting with a dot."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise PrunelabError(f"--name {name!r} is not a plain name",
                            "use letters, digits, '.', '_' and '-', e.g. tiny-mamba2")


def stdlib_docstrings(limit_chars: int = 4_000_000) -> str:
    """Docstrings of the standard library's modules, classes and functions (those of 200
    characters or more), in a fixed order. `pydoc_data` is left out: the evaluation text of
    this machine is drawn from it."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"pydoc_data", "test", "idlelib", "site-packages", "lib2to3", "tkinter", "turtledemo"}
    pieces, size = [], 0
    for path in sorted(root.rglob("*.py")):
        if skip & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 200:
                    pieces.append(doc.strip())
                    size += len(doc)
        if size >= limit_chars:
            break
    return "\n\n".join(pieces)


def training_text(sources: list[str]) -> str:
    from prunelab.data.sources import load_text

    return "\n\n".join(stdlib_docstrings() if s == DOCSTRINGS_SOURCE else load_text(s)
                       for s in sources)


def build_config(recipe: TrainRecipe, tokenizer):
    """The architecture's config; the twins' defaults have about the same number of block
    parameters (six Mamba-2 blocks of width 256 hold about what three Llama blocks do)."""
    from transformers import LlamaConfig, Mamba2Config, MambaConfig

    common = dict(vocab_size=len(tokenizer), hidden_size=recipe.hidden, tie_word_embeddings=True,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                  else tokenizer.eos_token_id)
    if recipe.architecture == "mamba2":
        inner = 2 * recipe.hidden
        return Mamba2Config(num_hidden_layers=recipe.layers or 6, expand=2,
                            head_dim=recipe.head_dim, num_heads=inner // recipe.head_dim,
                            n_groups=1, state_size=recipe.state, chunk_size=64, **common)
    if recipe.architecture == "mamba":
        return MambaConfig(num_hidden_layers=recipe.layers or 6, expand=2,
                           state_size=recipe.state, **common)
    return LlamaConfig(num_hidden_layers=recipe.layers or 3, intermediate_size=3 * recipe.hidden,
                       num_attention_heads=max(1, recipe.hidden // 64),
                       num_key_value_heads=max(1, recipe.hidden // 64),
                       max_position_embeddings=max(2048, recipe.seqlen), **common)


def batches(tokens: torch.Tensor, recipe: TrainRecipe):
    """`recipe.steps` batches of random windows, in an order fixed by the seed alone."""
    import torch

    rng = random.Random(recipe.seed)
    if len(tokens) <= recipe.seqlen + 1:
        raise PrunelabError(f"the training text has only {len(tokens)} tokens",
                            f"give more text than one window of {recipe.seqlen}")
    for _ in range(recipe.steps):
        starts = [rng.randrange(0, len(tokens) - recipe.seqlen) for _ in range(recipe.batch)]
        yield torch.stack([tokens[s:s + recipe.seqlen] for s in starts])


def sampled_loss(model, batch: torch.Tensor, share: float,
                 generator: torch.Generator) -> torch.Tensor:
    """Mean next-token loss over a random `share` of the batch's positions (all at 1)."""
    import torch

    hidden = model.base_model(input_ids=batch, use_cache=False).last_hidden_state[:, :-1]
    targets = batch[:, 1:].reshape(-1)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    if share < 1:
        count = max(1, int(share * len(targets)))
        chosen = torch.randperm(len(targets), generator=generator)[:count]
        hidden, targets = hidden[chosen], targets[chosen]
    logits = model.get_output_embeddings()(hidden)
    return torch.nn.functional.cross_entropy(logits.float(), targets)


def learning_rate(recipe: TrainRecipe, step: int) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to a tenth."""
    warm = max(1, recipe.steps // 20)
    if step < warm:
        return recipe.lr * (step + 1) / warm
    progress = (step - warm) / max(1, recipe.steps - warm)
    return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(recipe: TrainRecipe, name: str, *, overwrite: bool = False, progress: bool = True,
          tokenizer=None) -> Path:
    """Train `recipe`, measure it, and save it as cache model `name`; return its directory.
    (`tokenizer`: SmolLM2's unless given; tests give a small one.)"""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prunelab.zoo.models import ZOO, LoadedModel, ensure_converted, model_dir

    recipe.check()
    check_name(name)
    final = model_dir(name)
    if name in ZOO:
        raise PrunelabError(f"{name} is a zoo model's name", "choose another --name")
    if final.exists() and not overwrite:
        raise PrunelabError(f"a model named {name} is already in the cache ({final})",
                            "choose another --name, or pass --overwrite")
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(ensure_converted(ZOO[TEMPLATE_TOKENIZER]))
    text = training_text(recipe.sources)
    tokens = torch.tensor(tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.long)
    torch.manual_seed(recipe.seed)
    model = AutoModelForCausalLM.from_config(build_config(recipe, tokenizer), dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95),
                                  weight_decay=0.1)
    losses: list[float] = []
    scoring = torch.Generator().manual_seed(recipe.seed)
    started = time.monotonic()
    for step, batch in enumerate(batches(tokens, recipe)):
        if recipe.max_minutes is not None and time.monotonic() - started > 60 * recipe.max_minutes:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(recipe, step)
        loss = sampled_loss(model, batch, recipe.scored, scoring)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if progress and (step % 10 == 0 or step + 1 == recipe.steps):
            print(f"step {step + 1}/{recipe.steps} loss {losses[-1]:.3f} "
                  f"({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    seconds = time.monotonic() - started
    model.eval()
    tail = losses[-max(1, len(losses) // 10):]
    record = {
        "name": name,
        "description": f"{recipe.architecture} trained here ({len(losses)} steps)",
        "architecture": type(model).__name__,
        "license": "trained here",
        "dequantized": False,
        "trained_here": True,
        "recipe": asdict(recipe),
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps_done": len(losses),
        "train_tokens": len(losses) * recipe.batch * recipe.seqlen,
        "text_tokens": len(tokens),
        "train_seconds": round(seconds, 1),
        "train_loss": round(sum(tail) / len(tail), 4),  # mean of the last tenth of steps
        "first_loss": round(losses[0], 4),
    }
    if recipe.eval_source is not None:
        from prunelab.evaluate.perplexity import perplexity

        loaded = LoadedModel(model=model, tokenizer=tokenizer, name=name)
        value = perplexity(loaded, recipe.eval_source, recipe.seqlen, recipe.eval_windows)
        record["perplexity"] = {"source": recipe.eval_source, "seqlen": recipe.seqlen,
                                "windows": recipe.eval_windows, "value": round(value, 3)}
    with atomic_dir(final, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "zoo.json").write_text(json.dumps(record, indent=2))
    return final


def trained_models() -> list[dict]:
    """The zoo.json of every model trained here and kept in the cache."""
    found = []
    root = cache_dir("models")
    for directory in sorted(root.iterdir()) if root.is_dir() else []:
        path = directory / "zoo.json"
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("trained_here"):
            found.append({**data, "name": directory.name})
    return found
