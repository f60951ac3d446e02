"""Models larger than memory: compress and evaluate a checkpoint on disk one block at a time.

The model is built without weights (accelerate's `init_empty_weights`: parameters on the
meta device, buffers such as rotary tables real). The engine's loop (`prunelab.engine`) then
asks this module's `StreamedBlocks` for each block before it runs it: the block's tensors are
read from the safetensors shards, and once the block is decided they are written to an
output shard of their own and the block goes back to the meta device. Embeddings and the
final norm are read once, the head only where it is needed (evaluation). So the process holds
one block, the calibration activations and the embeddings, whatever the model's size.

Tensors are read with plain file reads into private buffers rather than through a memory
map: pages of a mapping that the forward pass touches count in the process's RSS until the
mapping goes, which for a whole shard can be many blocks' worth.
"""

from __future__ import annotations

import errno
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from prunelab import arch, defaults
from prunelab.checks import check_streamable_tasks
from prunelab.errors import PrunelabError
from prunelab.zoo.weights import (_DTYPES, SAFETENSORS_INDEX, check_weight_files,
                                  read_safetensors_header)

# Free disk kept beyond the estimated output (the tokenizer, the index, file-system slack).
DISK_MARGIN_BYTES = 64 * 1024 * 1024
_FIX_FILES = "copy or download the checkpoint again, or re-save it with save_pretrained"


class ShardReader:
    """The tensors of a directory's safetensors files, read by name (plain reads)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        check_weight_files(self.directory)  # truncated, damaged or incomplete: one line
        self.entries: dict[str, tuple[Path, dict, int]] = {}
        files = sorted(self.directory.glob("*.safetensors"))
        if not files:
            raise PrunelabError(f"{self.directory} holds no safetensors weights",
                                "streaming reads safetensors shards: re-save the model with "
                                "save_pretrained(safe_serialization=True)")
        for file in files:
            header, start = read_safetensors_header(file)
            for name, entry in header.items():
                self.entries[name] = (file, entry, start)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def nbytes(self, name: str) -> int:
        begin, end = self.entries[name][1]["data_offsets"]
        return end - begin

    def numel(self, name: str) -> int:
        count = 1
        for n in self.entries[name][1]["shape"]:
            count *= n
        return count

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Tensor `name` in a buffer of its own (converted to `dtype` when given)."""
        if name not in self.entries:
            raise PrunelabError(f"no safetensors file in {self.directory} holds tensor {name}, "
                                "which the model needs", _FIX_FILES)
        file, entry, start = self.entries[name]
        stored = _DTYPES.get(entry["dtype"])
        if stored is None:
            raise PrunelabError(f"{file} stores {name} as {entry['dtype']}, which prunelab "
                                "cannot read", "re-save the model in fp32, bf16 or fp16")
        tensor = torch.empty(entry["shape"], dtype=stored)
        buffer = tensor.reshape(-1).view(torch.uint8).numpy()
        begin, _ = entry["data_offsets"]
        with open(file, "rb") as stream:
            stream.seek(start + begin)
            got = stream.readinto(memoryview(buffer))
        if got != buffer.nbytes:  # the file shrank after its header was checked
            raise PrunelabError(f"{file} is truncated: tensor {name} is cut short", _FIX_FILES)
        return tensor if dtype is None or dtype == stored else tensor.to(dtype)


class LazyWeights(Mapping):
    """Every prunable weight of a streamed model, as [out, in], read from disk when looked
    up (a plan that visits the layers one by one holds one at a time)."""

    def __init__(self, reader: ShardReader, layers: Mapping[str, nn.Module], dtype):
        self._reader, self._layers, self._dtype = reader, dict(layers), dtype
        self._last: tuple[str, torch.Tensor] | None = None

    def __getitem__(self, name: str) -> torch.Tensor:
        if self._last is not None and self._last[0] == name:
            return self._last[1]
        layer = self._layers[name]
        weight = arch.as_out_in(layer, self._reader.read(f"{name}.weight", self._dtype))
        self._last = (name, weight)
        return weight

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)


def _parameters_to_meta(module: nn.Module) -> None:
    """Drop a module's parameter storage: each becomes a meta tensor of the same shape."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None and param.device.type != "meta":
                sub._parameters[name] = nn.Parameter(
                    torch.empty(param.shape, dtype=param.dtype, device="meta"),
                    requires_grad=False)


class StreamedModel:
    """A checkpoint directory as a model skeleton plus its shards: blocks are read on demand."""

    def __init__(self, directory: str | Path, dtype: torch.dtype = torch.float32,
                 trust_remote_code: bool = False):
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from prunelab.zoo.directory import check_model_directory, check_vocabulary
        from prunelab.zoo.models import LoadedModel, _read_records, resolve

        target, _ = resolve(directory)
        if not isinstance(target, Path):
            raise PrunelabError(f"{directory} is a hub id; streaming reads a local directory",
                                "download the model into a directory first, then pass that")
        self.directory = target
        info = _read_records(target)
        check_model_directory(target, trust_remote_code=trust_remote_code)
        self.reader = ShardReader(target)
        self.dtype = dtype
        config = AutoConfig.from_pretrained(target, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(target, trust_remote_code=trust_remote_code)
        check_vocabulary(tokenizer, config, directory)
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype,
                                                     trust_remote_code=trust_remote_code)
        model.eval()
        self.model = model
        found = arch.find_blocks(model)
        self.blocks, self.prefix = found.blocks, found.path
        self.loaded = LoadedModel(model=model, tokenizer=tokenizer, name=str(directory),
                                  path=target, info=info)
        self._check_names()

    # -- which tensors are whose ---------------------------------------------------------

    def block_names(self, index: int) -> list[str]:
        return [f"{self.prefix}.{index}.{n}" for n in self.blocks[index].state_dict()]

    def outside_names(self) -> list[str]:
        """The checkpoint's tensors that belong to no block (embeddings, norms, head)."""
        inside = f"{self.prefix}."
        return [n for n in self.reader.entries if not n.startswith(inside)]

    def _tied_head(self) -> str | None:
        """The head's weight name when the model ties it to the input embeddings."""
        head = self.model.get_output_embeddings()
        if head is None or not getattr(self.model.config, "tie_word_embeddings", False):
            return None
        return next((n for n, p in self.model.named_parameters(remove_duplicate=False)
                     if p is head.weight), None)

    def _check_names(self) -> None:
        """Every tensor the model needs lies in some shard (before any work)."""
        tied = self._tied_head()
        needed = list(self.model.state_dict())
        missing = [n for n in needed if n not in self.reader and n != tied]
        if missing:
            raise PrunelabError(
                f"no safetensors file in {self.directory} holds tensor {missing[0]}"
                + (f" (nor {len(missing) - 1} others)" if len(missing) > 1 else "")
                + ", which the model's config needs", _FIX_FILES)

    # -- loading and dropping ------------------------------------------------------------

    def _assign(self, module: nn.Module, prefix: str, names: Sequence[str]) -> None:
        state = {n[len(prefix):]: self.reader.read(n, self.dtype) for n in names}
        module.load_state_dict(state, strict=False, assign=True)

    def load_outside(self, head: bool) -> None:
        """Read the tensors outside the blocks (the head only with `head`)."""
        head_module = self.model.get_output_embeddings()
        head_names = {f"{n}.weight" for n, m in self.model.named_modules() if m is head_module}
        names = [n for n in self.outside_names() if head or n not in head_names]
        state = {n: self.reader.read(n, self.dtype) for n in names if n in self.model.state_dict()}
        self.model.load_state_dict(state, strict=False, assign=True)
        if head and self._tied_head() is not None:
            head_module.weight = self.model.get_input_embeddings().weight

    def load_block(self, index: int) -> None:
        block = self.blocks[index]
        if next(block.parameters()).device.type != "meta":
            return
        prefix = f"{self.prefix}.{index}."
        self._assign(block, prefix, self.block_names(index))

    def drop_block(self, index: int) -> None:
        _parameters_to_meta(self.blocks[index])

    def weight_bytes(self, dtype: torch.dtype | None = None) -> int:
        """The checkpoint's tensors' bytes when held in `dtype` (as stored when None)."""
        if dtype is None:
            return sum(self.reader.nbytes(n) for n in self.reader.entries)
        size = torch.empty(0, dtype=dtype).element_size()
        return sum(self.reader.numel(n) * size for n in self.reader.entries)


class StreamedBlocks:
    """The engine's `BlockSource` for a streamed model: reads each block when asked, writes
    it to the output shards once decided, drops it either way."""

    def __init__(self, streamed: StreamedModel, writer: ShardWriter | None):
        self.streamed, self.writer = streamed, writer

    def load(self, index: int) -> None:
        self.streamed.load_block(index)

    def release(self, index: int, compressed: bool) -> None:
        from prunelab.allocator import release_free_heap

        if compressed and self.writer is not None:
            block = self.streamed.blocks[index]
            prefix = f"{self.streamed.prefix}.{index}."
            self.writer.write({prefix + n: t for n, t in block.state_dict().items()})
        self.streamed.drop_block(index)
        release_free_heap()  # the block's buffers go back to the system now

    def plan_weights(self) -> Mapping[str, torch.Tensor]:
        layers = arch.named_prunable_layers(self.streamed.model)
        return LazyWeights(self.streamed.reader, layers, self.streamed.dtype)


class ShardWriter:
    """Writes tensors to numbered safetensors shards in a directory and, at the end, the
    index that `from_pretrained` reads."""

    def __init__(self, directory: Path, total_shards: int):
        self.directory, self.total = Path(directory), total_shards
        self.count = 0
        self.weight_map: dict[str, str] = {}
        self.total_size = 0

    def write(self, tensors: Mapping[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        self.count += 1
        name = f"model-{self.count:05d}-of-{self.total:05d}.safetensors"
        plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        try:
            save_file(plain, str(self.directory / name), metadata={"format": "pt"})
        except Exception as exc:  # safetensors reports I/O errors as its own error type
            if getattr(exc, "errno", None) != errno.ENOSPC and "No space left" not in str(exc):
                raise
            raise PrunelabError(
                f"the disk under {self.directory.parent} ran out of room while writing shard "
                f"{self.count} of {self.total} (there was room when the run began: something "
                "else has written there since)",
                "free space there and run again; nothing of this run was kept") from None
        for key, value in plain.items():
            self.weight_map[key] = name
            self.total_size += value.numel() * value.element_size()

    def finish(self) -> None:
        if self.count != self.total:
            raise RuntimeError(f"wrote {self.count} shards of {self.total}")
        index = {"metadata": {"total_size": self.total_size},
                 "weight_map": dict(sorted(self.weight_map.items()))}
        (self.directory / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def free_disk_bytes(path: Path) -> int:
    """Bytes free on the file system that holds `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_disk_room(out: Path, need: int) -> None:
    """Refuse, before any work, an output the disk cannot hold."""
    free = free_disk_bytes(out)
    if need + DISK_MARGIN_BYTES > free:
        raise PrunelabError(
            f"the output needs about {need / 1e9:.2f} GB but only {free / 1e9:.2f} GB is free "
            f"where {out} would be written", "free disk space, or choose an --out on a "
            "larger disk")


def check_streamable(method) -> None:
    """Refuse a method that needs the whole model at once, naming why."""
    from prunelab.methods.statistics import accumulator

    grads = [n for n in method.planning_statistics if accumulator(n).reads == "weight_grad"]
    if grads:
        raise PrunelabError(
            f"method {method.name} cannot stream: its plan needs weight gradients, a backward "
            "pass through the whole model at once", "drop --stream (the model must fit in "
            "memory), or choose a method without gradients (wanda, sparsegpt, owl, gptq)")
    if method.name == "magnitude-global":
        raise PrunelabError(
            f"method {method.name} cannot stream: one threshold over every weight needs them "
            "all at once", "drop --stream, or use magnitude (a threshold per layer)")


def weights_exceed_memory(directory: Path, dtype: torch.dtype = torch.float32) -> bool:
    """Whether a checkpoint's weights, held in `dtype`, would not fit in the memory that is
    available now (the case for streaming)."""
    import psutil

    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        return False
    size = torch.empty(0, dtype=dtype).element_size()
    total = 0
    for file in files:
        header, _ = read_safetensors_header(file)
        for entry in header.values():
            count = 1
            for n in entry["shape"]:
                count *= n
            total += count * size
    return total > psutil.virtual_memory().available


def stream_prune(model_dir: str | Path, out: str | Path, method: str = defaults.PRUNE_METHOD,
                 sparsity: float | None = None, *, pattern: str | None = None,
                 calibration=None, seed: int | None = None,
                 batch_size: int | None = None, device: str | None = None,
                 progress: bool = True, dtype: torch.dtype = torch.float32,
                 trust_remote_code: bool = False, extra: dict | None = None,
                 prepare: Callable | None = None, **options):
    """Prune (or quantize) the checkpoint in `model_dir` block by block, writing the result
    to `out` (sharded safetensors, its index, config, tokenizer, prunelab.json) without ever
    holding more than one block's weights; return the PruneResult.

    Arguments as for `prunelab.compress.prune`; `dtype` is what the weights are read and
    computed in (statistics stay fp32). `prepare`, when given, is called with the model
    skeleton (a LoadedModel whose parameters have no data yet) for checks and choices that
    need the model's shapes; a mapping it returns replaces the method's options (the CLI's
    quantize picks its group size so). `out` is written to a temporary directory beside it
    and renamed at the end, so a failed run leaves nothing behind.
    """
    from prunelab.allocator import compact_heap, release_free_heap
    from prunelab.checkpoint import versions
    from prunelab.compress import (PruneResult, _plain, check_model_fit, check_prune_args,
                                   prune_batch_size)
    from prunelab.data.checks import check_batch_size
    from prunelab.data.corpora import calibration_windows, tokens_digest
    from prunelab.devices import resolve_device
    from prunelab.engine import prune_blocks
    from prunelab.paths import atomic_dir
    from prunelab.structure import model_size
    from prunelab.zoo.provenance import PROVENANCE_FILE

    out = Path(out)
    options = dict(options)
    only = arch.check_only(options.pop("only", None))
    args = check_prune_args(method, sparsity, pattern, calibration, options, seed=seed, out=out)
    check_streamable(args.method)
    if batch_size is not None:
        check_batch_size(batch_size)
    resolve_device(device)
    streamed = StreamedModel(model_dir, dtype, trust_remote_code)
    loaded = streamed.loaded
    chosen_options = prepare(loaded) if prepare is not None else None
    if chosen_options is not None:
        args = check_prune_args(method, sparsity, pattern, calibration, dict(chosen_options),
                                seed=seed, out=out)
        check_streamable(args.method)
    check_model_fit(loaded, args)
    need = streamed.weight_bytes(dtype)
    check_disk_room(out, need)
    chosen = args.method
    if batch_size is None:
        batch_size = prune_batch_size(args.calibration.seqlen, device or "cpu")
    streamed.load_outside(head=False)  # what runs before block 0 (embeddings)
    windows, calib_record = None, None
    with compact_heap():
        if chosen.needs_calibration:
            windows = calibration_windows(loaded, args.calibration)
            release_free_heap()
            calib_record = {**args.calibration.to_dict(), "tokens_sha256": tokens_digest(windows),
                            "bos": loaded.add_bos}
        size_before = model_size(loaded.model)
        start = time.perf_counter()
        with atomic_dir(out) as tmp:
            writer = ShardWriter(tmp, len(streamed.blocks) + 1)
            source = StreamedBlocks(streamed, writer)
            with arch.only_layers(only):
                records = prune_blocks(loaded.model, chosen, args.sparsity, args.pattern,
                                       windows, batch_size=batch_size, device=device,
                                       progress=progress, source=source, keep_quantized=False)
            # The tensors outside the blocks, copied through one at a time.
            outside = streamed.outside_names()
            writer.write({n: streamed.reader.read(n, dtype) for n in outside})
            writer.finish()
            seconds = time.perf_counter() - start
            loaded.model.config.save_pretrained(tmp)
            generation = getattr(loaded.model, "generation_config", None)
            if generation is not None and (streamed.directory / "generation_config.json").exists():
                generation.save_pretrained(tmp)
            loaded.tokenizer.save_pretrained(tmp)
            result = PruneResult(
                method=method, options={**_plain(chosen.config), **({"only": only} if only else {})},
                sparsity=args.sparsity, pattern=str(args.pattern) if args.pattern else None,
                calibration=calib_record, layers=list(records), seconds=seconds,
                model_size={"before": size_before, "after": model_size(loaded.model)})
            on_disk = sum(f.stat().st_size for f in tmp.glob("*.safetensors"))
            parameters = sum(p.numel() for p in loaded.model.parameters())
            provenance = {
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "model": {"source": str(model_dir), "dequantized": loaded.dequantized,
                          **({"zoo": loaded.info["zoo"]} if "zoo" in loaded.info else {})},
                "pruning": result.to_dict(),
                "versions": versions(),
                "streamed": {"dtype": str(dtype).removeprefix("torch."),
                             "shards": writer.total},
                **(extra or {}),
                "storage": {"format": "dequantized", "safetensors_bytes": on_disk,
                            "parameters": parameters, "fp32_bytes": 4 * parameters,
                            "bf16_bytes": 2 * parameters},
                "weights_file_bytes": on_disk,
            }
            (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    return result


def stream_quantize(model_dir: str | Path, out: str | Path, method: str = defaults.QUANT_METHOD,
                    bits: int = defaults.QUANT_BITS,
                    group_size: int | None = defaults.QUANT_GROUP_SIZE, symmetric: bool = False,
                    **kwargs):
    """`stream_prune` with the quantization options spelled out (rtn, gptq)."""
    return stream_prune(model_dir, out, method, None, bits=bits, group_size=group_size,
                        symmetric=symmetric, **kwargs)


# -- evaluation ------------------------------------------------------------------------------


@torch.no_grad()
def stream_windows_nll(streamed: StreamedModel, windows: torch.Tensor,
                       batch_size: int = defaults.PERPLEXITY_BATCH_SIZE,
                       progress: bool = False) -> tuple[float, int]:
    """`prunelab.evaluate.perplexity.windows_nll` of a streamed model: every window goes
    through block 0, then all of them through block 1, and so on (one read of the weights);
    the final norm and head then score each batch."""
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from prunelab.engine import BlockRunner

    model = streamed.model
    use_cache = getattr(model.config, "use_cache", None)
    model.config.use_cache = False
    try:
        streamed.load_outside(head=False)
        streamed.load_block(0)
        runner = BlockRunner(model, streamed.blocks, windows, batch_size, torch.device("cpu"))
        for index in tqdm(range(len(streamed.blocks)), desc="perplexity (streamed)",
                          unit="block", disable=not progress, file=sys.stderr,
                          dynamic_ncols=True):
            streamed.load_block(index)
            runner.run(index, advance=True)
            streamed.drop_block(index)
        streamed.load_outside(head=True)
        total, count = 0.0, 0
        for batch, hidden in zip(windows.split(batch_size), runner.inputs):
            logits = _head_logits(model, streamed.blocks, batch, hidden)
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                   batch[:, 1:].reshape(-1), reduction="sum")
            total += float(loss)
            count += batch[:, 1:].numel()
    finally:
        model.config.use_cache = use_cache
    return total, count


def _head_logits(model: nn.Module, blocks: nn.ModuleList, input_ids: torch.Tensor,
                 final_hidden: torch.Tensor, **inputs) -> torch.Tensor:
    """The model's logits when its last block has produced `final_hidden`: the model's own
    forward runs with every block standing in as the identity and block 0's input replaced,
    so whatever the family does after its blocks (final norm, soft-capping, head) is done
    as it would be."""
    def replace(module, args, kwargs):
        if args:
            return (final_hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": final_hidden}

    def stand_in(*args, **kwargs):
        return arch.block_hidden(args, kwargs)

    handle = blocks[0].register_forward_pre_hook(replace, with_kwargs=True)
    for block in blocks:
        block.forward = stand_in
    try:
        return model(input_ids=input_ids, use_cache=False, **inputs).logits
    finally:
        handle.remove()
        for block in blocks:
            del block.forward


def stream_perplexity(model_dir: str | Path, source: str = defaults.EVAL_SOURCE,
                      seqlen: int = defaults.EVAL_SEQLEN,
                      n_windows: int | None = defaults.EVAL_WINDOWS,
                      batch_size: int = defaults.PERPLEXITY_BATCH_SIZE, progress: bool = False,
                      dtype: torch.dtype = torch.float32,
                      trust_remote_code: bool = False) -> float:
    """`prunelab.evaluate.perplexity.perplexity` of the checkpoint in `model_dir`, streamed:
    one pass over its weights, all windows' activations held in memory."""
    import math

    from prunelab.data.checks import check_window_args
    from prunelab.data.corpora import eval_windows

    check_window_args(seqlen, n_windows, batch_size)
    streamed = StreamedModel(model_dir, dtype, trust_remote_code)
    windows = eval_windows(streamed.loaded, source, seqlen, n_windows)
    total, count = stream_windows_nll(streamed, windows, batch_size, progress)
    return math.exp(total / count)


def note(text: str) -> None:
    print(f"prunelab: {text}", file=sys.stderr)


class _StreamedForwards(nn.Module):
    """Stands in for a streamed model where scoring code calls `model(...)` batch by batch.

    Recording: each call's inputs are kept and placeholder logits returned. `run()` then takes
    every recorded batch through block 0, all of them through block 1, and so on (one read of
    the weights). Replaying: the same calls, made again in the same order by the same
    deterministic code, get their real logits from the final norm and head.
    """

    def __init__(self, streamed: StreamedModel):
        super().__init__()
        self.streamed = streamed
        self.config = streamed.model.config
        # scoring reads the device and the dtype (for its masks) from the first parameter
        self.anchor = nn.Parameter(torch.zeros(1, dtype=streamed.dtype), requires_grad=False)
        self.calls: list[dict] = []
        self.hidden: list[torch.Tensor] | None = None
        self._next = 0
        self._head_keeps = "logits_to_keep" in _parameters_of(streamed.model.forward)

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False,
                logits_to_keep=0):
        keep = logits_to_keep or input_ids.shape[1]
        if self.hidden is None:  # recording
            inputs = {"attention_mask": attention_mask}
            if position_ids is not None:
                inputs["position_ids"] = position_ids
            self.calls.append({"input_ids": input_ids, "inputs": inputs})
            vocab = self.streamed.model.config.vocab_size
            return _Logits(torch.zeros(input_ids.shape[0], keep, vocab))
        call = self.calls[self._next]
        if not torch.equal(call["input_ids"], input_ids):
            raise RuntimeError("the replayed calls differ from the recorded ones")
        hidden = self.hidden[self._next]
        self.hidden[self._next] = None  # each batch's hidden states are used once
        self._next += 1
        model, blocks = self.streamed.model, self.streamed.blocks
        if self._head_keeps:
            logits = _head_logits(model, blocks, input_ids, hidden, logits_to_keep=keep)
        else:
            logits = _head_logits(model, blocks, input_ids, hidden)[:, -keep:]
        return _Logits(logits)

    @torch.no_grad()
    def run(self, progress: bool = False) -> None:
        from tqdm.auto import tqdm

        streamed = self.streamed
        model, blocks = streamed.model, streamed.blocks
        use_cache = getattr(model.config, "use_cache", None)
        model.config.use_cache = False
        try:
            streamed.load_outside(head=False)
            streamed.load_block(0)
            hidden, calls = [], []
            for call in self.calls:
                first, per_block = arch.capture_block_calls(model, blocks, call["input_ids"],
                                                            stop_after_first=False,
                                                            inputs=call["inputs"])
                hidden.append(first)
                calls.append(per_block)
            for index in tqdm(range(len(blocks)), desc="scoring (streamed)", unit="block",
                              disable=not progress, file=sys.stderr, dynamic_ncols=True):
                streamed.load_block(index)
                for k in range(len(hidden)):
                    hidden[k] = arch.call_block(blocks[index], hidden[k], calls[k][index])
                streamed.drop_block(index)
            streamed.load_outside(head=True)
        finally:
            model.config.use_cache = use_cache
        self.hidden, self._next = hidden, 0


class _Logits:
    def __init__(self, logits: torch.Tensor):
        self.logits = logits


def _parameters_of(function) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return set()


def stream_evaluate(model_dir: str | Path, tasks, *, dtype: torch.dtype = torch.float32,
                    trust_remote_code: bool = False, progress: bool = True, **options):
    """`prunelab.evaluate.runner.evaluate` of the checkpoint in `model_dir`, streamed: the
    log-likelihood tasks (multiple choice, rolling) of every item are scored with one pass
    over the weights, every batch's activations held in memory. Generation tasks are refused
    (`check_streamable_tasks`)."""
    from dataclasses import replace

    from prunelab.evaluate.runner import evaluate
    from prunelab.tasks.registry import get_tasks

    check_streamable_tasks(get_tasks(tasks))
    streamed = StreamedModel(model_dir, dtype, trust_remote_code)
    forwards = _StreamedForwards(streamed)
    proxy = replace(streamed.loaded, model=forwards)
    evaluate(proxy, tasks, progress=False, **options)  # records the batches
    forwards.run(progress)
    return evaluate(proxy, tasks, progress=progress, **options)
