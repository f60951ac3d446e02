"""An opt-in runtime that computes pruned linears with sparse kernels, and its measurement.

A pruned model computes exactly as much as a dense one: its zeros are multiplied like any
other weight. To skip them the weight must be stored sparse and multiplied by a sparse
kernel. This module does that for the linears of a loaded model and measures, in one
process, what it buys end to end:

- CPU: a linear whose share of zeros is at least `min_sparsity` becomes a `CsrLinear` (torch
  CSR weight, fp32). torch's CSR kernel beats the dense one only at high sparsity
  (bench/bench_sparse_matmul.py measures the crossover), so the others stay dense.
- CUDA: a linear whose weight is exactly 2:4 (two of each four consecutive inputs zero)
  becomes a linear over `torch.sparse.to_sparse_semi_structured` (fp16/bf16, the format the
  sparse tensor cores read).

`measure_speed` times prefill (one forward of a prompt of `prefill_tokens`) and decode
(`decode_tokens` steps of one token with the key/value cache) for the dense model and the
sparse-runtime copy, alternating the two so that a machine's changing load falls on both,
and checks that the copy's logits match the dense model's.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from prunelab.arch import named_prunable_layers
from prunelab.errors import PrunelabError

# Below this share of zeros torch's CPU CSR kernel was slower than the dense matmul at every
# shape measured (bench/bench_sparse_matmul.py; docs/findings/sparse-inference.md).
CPU_MIN_SPARSITY = 0.9
# A method asked for 90% zeros rounds the count down (0.8999948 of a 192 x 576 matrix), so
# the threshold is met within this slack.
SPARSITY_SLACK = 1e-3


class CsrLinear(nn.Module):
    """y = x Wᵀ + b with W stored as a torch CSR tensor (CPU)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with warnings.catch_warnings():  # torch calls its CSR support "beta" on first use
            warnings.simplefilter("ignore", UserWarning)
            self.weight_csr = linear.weight.detach().to_sparse_csr()
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(),
                                                                  requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        # the sparse operand must come first: (W xᵀ)ᵀ
        out = (self.weight_csr @ flat.t().to(self.weight_csr.dtype)).t().to(x.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


class SemiStructuredLinear(nn.Module):
    """y = x Wᵀ + b with a 2:4 W in torch's semi-structured sparse format (CUDA)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        from torch.sparse import to_sparse_semi_structured

        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(to_sparse_semi_structured(linear.weight.detach()),
                                   requires_grad=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


def weight_sparsity(weight: torch.Tensor) -> float:
    return float((weight == 0).sum()) / weight.numel()


def is_two_four(weight: torch.Tensor) -> bool:
    """Every group of four consecutive inputs of every row holds at least two zeros."""
    if weight.shape[1] % 4:
        return False
    groups = weight.reshape(weight.shape[0], -1, 4)
    return bool(((groups == 0).sum(-1) >= 2).all())


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def to_sparse_runtime(model: nn.Module, min_sparsity: float = CPU_MIN_SPARSITY) -> dict:
    """Replace, in place, each block linear with at least `min_sparsity` zeros by a
    `CsrLinear`; return {layer name: its sparsity} of those replaced."""
    replaced = {}
    for name, layer in named_prunable_layers(model).items():
        if not isinstance(layer, nn.Linear):
            continue
        sparsity = weight_sparsity(layer.weight)
        if sparsity + SPARSITY_SLACK >= min_sparsity:
            _replace(model, name, CsrLinear(layer))
            replaced[name] = sparsity
    return replaced


def to_semi_structured(model: nn.Module) -> dict:
    """Replace, in place, each 2:4 block linear of a CUDA fp16/bf16 model by a
    `SemiStructuredLinear`; return {layer name: its sparsity} of those replaced."""
    replaced = {}
    for name, layer in named_prunable_layers(model).items():
        if isinstance(layer, nn.Linear) and is_two_four(layer.weight):
            sparsity = weight_sparsity(layer.weight)
            _replace(model, name, SemiStructuredLinear(layer))
            replaced[name] = sparsity
    return replaced


@dataclass
class SpeedResult:
    device: str
    threads: int
    dtype: str
    prefill_tokens: int
    decode_tokens: int
    repeats: int
    prefill_tokens_per_s_dense: float
    decode_tokens_per_s_dense: float
    prefill_tokens_per_s_sparse: float | None = None
    decode_tokens_per_s_sparse: float | None = None
    sparse_layers: int = 0
    dense_layers: int = 0
    max_abs_logit_difference: float | None = None
    outputs_match: bool | None = None
    layers_replaced: dict = field(default_factory=dict)

    def speedup(self, kind: str) -> float | None:
        sparse = getattr(self, f"{kind}_tokens_per_s_sparse")
        return sparse / getattr(self, f"{kind}_tokens_per_s_dense") if sparse else None

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("layers_replaced")
        data["prefill_speedup"] = self.speedup("prefill")
        data["decode_speedup"] = self.speedup("decode")
        return data


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _prefill_seconds(model, tokens: torch.Tensor) -> float:
    _sync(tokens.device)
    start = time.perf_counter()
    model(input_ids=tokens, use_cache=False)
    _sync(tokens.device)
    return time.perf_counter() - start


@torch.no_grad()
def _decode_seconds(model, prompt: torch.Tensor, steps: int) -> float:
    """Seconds for `steps` single-token forwards with the key/value cache (the prompt's own
    forward not counted). The tokens fed are fixed, not sampled, so both models do the same
    work whatever their logits."""
    cache = model(input_ids=prompt, use_cache=True).cache
    feed = prompt[:, -1:]
    _sync(prompt.device)
    start = time.perf_counter()
    for _ in range(steps):
        cache = model(input_ids=feed, cache=cache, use_cache=True).cache
    _sync(prompt.device)
    return time.perf_counter() - start


@torch.no_grad()
def measure_speed(model: nn.Module, *, sparse: bool = True, min_sparsity: float =
                  CPU_MIN_SPARSITY, prefill_tokens: int = 512, decode_tokens: int = 32,
                  repeats: int = 3, seed: int = 0, atol: float = 1e-3) -> SpeedResult:
    """Tokens per second of prefill and decode, dense and (with `sparse`) through the sparse
    runtime, measured alternately in this process; the runtime's logits are checked against
    the dense model's (`atol`, relative to the logits' scale)."""
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab, (1, prefill_tokens), generator=gen).to(device)
    decode_prompt = prompt[:, :16]
    models = {"dense": model}
    replaced: dict = {}
    if sparse:
        runtime = copy.deepcopy(model)
        replaced = (to_semi_structured(runtime) if device.type == "cuda"
                    else to_sparse_runtime(runtime, min_sparsity))
        if not replaced:
            raise PrunelabError(
                f"no linear of this model is sparse enough for the sparse runtime "
                f"({'2:4' if device.type == 'cuda' else f'at least {min_sparsity:.0%} zeros'})",
                "measure without --sparse-runtime, or lower --min-sparsity")
        models["sparse"] = runtime
    times: dict[str, dict[str, list[float]]] = {k: {"prefill": [], "decode": []} for k in models}
    for kind, m in models.items():  # warm-up: first-call allocations, kernel choice
        _prefill_seconds(m, prompt[:, :32])
        _decode_seconds(m, decode_prompt, 2)
    for _ in range(repeats):
        for kind, m in models.items():
            times[kind]["prefill"].append(_prefill_seconds(m, prompt))
            times[kind]["decode"].append(_decode_seconds(m, decode_prompt, decode_tokens))
    rate = {kind: {"prefill": prefill_tokens / statistics.median(t["prefill"]),
                   "decode": decode_tokens / statistics.median(t["decode"])}
            for kind, t in times.items()}
    dtype = next(model.parameters()).dtype
    result = SpeedResult(
        device=str(device), threads=torch.get_num_threads(), dtype=str(dtype).removeprefix(
            "torch."), prefill_tokens=prefill_tokens, decode_tokens=decode_tokens,
        repeats=repeats, prefill_tokens_per_s_dense=rate["dense"]["prefill"],
        decode_tokens_per_s_dense=rate["dense"]["decode"],
        dense_layers=len(named_prunable_layers(model)))
    if sparse:
        window = prompt[:, :128]
        expected = model(input_ids=window, use_cache=False).logits.float()
        got = models["sparse"](input_ids=window, use_cache=False).logits.float()
        difference = float((expected - got).abs().max())
        scale = float(expected.abs().max()) or 1.0
        result.prefill_tokens_per_s_sparse = rate["sparse"]["prefill"]
        result.decode_tokens_per_s_sparse = rate["sparse"]["decode"]
        result.sparse_layers = len(replaced)
        result.dense_layers -= len(replaced)
        result.max_abs_logit_difference = difference
        # half precision on the GPU: tolerance of its rounding
        tolerance = atol if dtype == torch.float32 else 2e-2
        result.outputs_match = difference <= tolerance * scale
        result.layers_replaced = replaced
    return result


def measure_directory(directory, *, sparse: bool = False, min_sparsity: float | None = None,
                      prefill_tokens: int = 512, decode_tokens: int = 32, repeats: int = 3,
                      threads: int | None = None, device: str | None = None,
                      record: bool = True) -> SpeedResult:
    """`measure_speed` of the saved model in `directory` (on `device`: the CPU by default, or
    CUDA in fp16 for the 2:4 kernels), recorded into its prunelab.json unless `record` is
    False. A runtime whose logits differ from dense math is refused, and nothing recorded."""
    from prunelab.devices import resolve_device
    from prunelab.zoo.models import load_model

    target = resolve_device(device) or torch.device("cpu")
    if threads is not None:
        torch.set_num_threads(threads)
    threshold = CPU_MIN_SPARSITY if min_sparsity is None else min_sparsity
    model = load_model(directory).model
    if target.type == "cuda":  # the 2:4 kernels take half precision
        model = model.to(target, dtype=torch.float16)
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and prefill_tokens > context:
        raise PrunelabError(f"--prefill-tokens {prefill_tokens} is longer than the model's "
                            f"context ({context})", "give a shorter --prefill-tokens")
    result = measure_speed(model, sparse=sparse, min_sparsity=threshold,
                           prefill_tokens=prefill_tokens, decode_tokens=decode_tokens,
                           repeats=repeats)
    if sparse and not result.outputs_match:
        raise PrunelabError(
            f"the sparse runtime's logits differ from the dense model's (max |difference| "
            f"{result.max_abs_logit_difference:.2e})",
            "report this; measure without --sparse-runtime meanwhile")
    if record:
        record_inference(directory, inference_record(result, threshold if sparse else None))
    return result


def machine_description() -> str:
    """The CPU model and core count, or the GPU's name: what a tokens/s figure was measured on."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores"
    if torch.cuda.is_available():
        text += f"; {torch.cuda.get_device_name()}"
    return text


def inference_record(result: SpeedResult, min_sparsity: float | None) -> dict:
    """The "inference" entry of prunelab.json: decode tokens/s dense and sparse at the top (what
    a user of a chat model feels), prefill beside them."""
    from datetime import datetime, timezone

    def side(kind: str) -> dict:
        return {"tokens": result.prefill_tokens if kind == "prefill" else result.decode_tokens,
                "tokens_per_s_dense": getattr(result, f"{kind}_tokens_per_s_dense"),
                "tokens_per_s_sparse": getattr(result, f"{kind}_tokens_per_s_sparse"),
                "speedup": result.speedup(kind)}
    decode = side("decode")
    return {"measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_description(), "device": result.device,
            "threads": result.threads, "dtype": result.dtype,
            "runtime": ("semi-structured 2:4" if result.device.startswith("cuda") else "csr")
            if result.sparse_layers else None,
            "min_sparsity": min_sparsity if result.sparse_layers else None,
            "tokens_per_s_dense": decode["tokens_per_s_dense"],
            "tokens_per_s_sparse": decode["tokens_per_s_sparse"],
            "speedup": decode["speedup"], "decode": decode, "prefill": side("prefill"),
            "sparse_layers": result.sparse_layers, "dense_layers": result.dense_layers,
            "repeats": result.repeats, "outputs_match": result.outputs_match,
            "max_abs_logit_difference": result.max_abs_logit_difference}


def record_inference(directory, record: dict) -> None:
    """Put `record` under "inference" in the directory's prunelab.json (rewritten atomically)."""
    from pathlib import Path

    from prunelab.paths import write_json_atomic
    from prunelab.zoo.provenance import PROVENANCE_FILE, read_provenance_file

    data = read_provenance_file(directory)
    data["inference"] = record
    write_json_atomic(Path(directory) / PROVENANCE_FILE, data)
