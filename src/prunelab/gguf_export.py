"""A saved model as one GGUF file, the format llama.cpp, ollama and LM Studio read.

Written with the `gguf` package (the one llama.cpp's own converter uses): the tensors under
llama.cpp's names (`gguf.get_tensor_name_map`), the hyperparameters under the architecture's
keys, and the tokenizer as llama.cpp's "gpt2" (byte-level BPE) vocabulary: tokens, their
types, merges and special token ids (`gguf.SpecialVocab`). Llama and Qwen2 models are taken;
any other architecture is refused in one line before anything is written.

Types:
- F16: every matrix in half precision (vectors such as norms stay F32, as llama.cpp keeps
  them). A pruned zero stays exactly zero.
- Q8_0 and Q4_0: every matrix in llama.cpp's 32-weight blocks with one scale each, quantized
  by `gguf.quants`. The token embedding (and output head) of a Q4_0 file is Q8_0, as
  llama.cpp's quantizer keeps those at more bits. A weight that was zero codes to zero in
  both (0 / scale rounds to the zero code), which `export_gguf` measures rather than assumes:
  it dequantizes each block matrix and counts the pruned zeros that are still exactly zero.

llama.cpp's Llama graph applies rotary embeddings to interleaved pairs where Hugging Face's
rotates halves, so the rows of q and k are permuted for Llama, as llama.cpp's converter does
(Qwen2 uses the halves layout in llama.cpp too, and is written as is).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prunelab.checks import GGUF_TYPES, check_gguf_type
from prunelab.errors import PrunelabError

# Hugging Face model_type -> llama.cpp architecture name
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}

# llama.cpp's name for the pre-tokenizer (its split regex), by the zoo model or family it
# was converted from; llama.cpp reads the name, it does not derive it from the vocabulary.
PRE_TOKENIZERS = {"smollm2": "smollm", "qwen2": "qwen2", "llama": "llama-bpe"}


@dataclass
class GgufExport:
    path: Path
    type: str
    architecture: str
    file_bytes: int
    tensors: int
    pruned_zeros: int = 0  # exact zeros in the block matrices before export
    zeros_kept: int = 0  # of those, still exactly zero after the type's codes
    new_zeros: int = 0  # nonzero weights that the codes turned into zero
    weights: int = 0  # weights of the block matrices
    per_tensor: dict = field(default_factory=dict)

    @property
    def zeros_kept_share(self) -> float:
        return self.zeros_kept / self.pruned_zeros if self.pruned_zeros else 1.0

    def to_dict(self) -> dict:
        return {"path": str(self.path), "type": self.type, "architecture": self.architecture,
                "file_bytes": self.file_bytes, "tensors": self.tensors,
                "weights": self.weights, "pruned_zeros": self.pruned_zeros,
                "zeros_kept": self.zeros_kept, "zeros_kept_share": self.zeros_kept_share,
                "new_zeros": self.new_zeros}


def default_output(directory: str | Path, type: str) -> Path:
    """Beside the model directory: `<dir>.<TYPE>.gguf`."""
    directory = Path(directory)
    return directory.with_name(f"{directory.name}.{type.upper()}.gguf")


def read_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise PrunelabError(f"{directory} has no config.json, so it is not a saved model",
                            "pass a directory written by `prunelab prune --out`")
    try:
        config = json.loads(path.read_text())
        if not isinstance(config, dict):
            raise ValueError("not a mapping")
    except (ValueError, UnicodeDecodeError) as exc:
        raise PrunelabError(f"{path} is damaged ({exc})", "restore it from a copy") from None
    return config


def check_exportable(directory: str | Path, type: str = "F16") -> dict:
    """The model's config, when its architecture, shapes, tokenizer and weights can be
    exported as `type`; one line naming what is missing otherwise. Reads no weights."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PrunelabError(f"{directory} is not a directory",
                            "pass a directory written by `prunelab prune --out`")
    config = read_config(directory)
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise PrunelabError(
            f"export-gguf takes Llama and Qwen2 models; {directory} is {model_type!r}",
            "export a llama or qwen2 model (e.g. smollm2-135m, qwen2.5-coder-0.5b), or use "
            "llama.cpp's convert_hf_to_gguf.py for this one")
    widths = {"hidden_size": config.get("hidden_size"),
              "intermediate_size": config.get("intermediate_size")}
    if not all(isinstance(w, int) for w in widths.values()):
        raise PrunelabError(f"{directory}'s config gives per-layer widths ({widths}), which "
                            "one GGUF architecture entry cannot hold",
                            "export a model whose blocks all have the same shapes")
    if type != "F16" and any(w % 32 for w in widths.values()):
        raise PrunelabError(f"{type} codes blocks of 32 weights, and {directory}'s widths "
                            f"{sorted(widths.values())} are not all multiples of 32",
                            "export it with --type F16")
    scaling = config.get("rope_scaling") or {
        k: v for k, v in (config.get("rope_parameters") or {}).items()
        if k not in ("rope_theta", "rope_type") or (k == "rope_type" and v != "default")}
    if scaling:
        raise PrunelabError(f"{directory} uses rope scaling {scaling}, which export-gguf does "
                            "not write", "export a model without rope scaling")
    if config.get("quantization_config"):
        raise PrunelabError(f"{directory} is a packed quantized checkpoint",
                            "export the dequantized model (`prunelab quantize --format "
                            "dequantized`)")
    if not (directory / "tokenizer.json").is_file():
        raise PrunelabError(f"{directory} has no tokenizer.json",
                            "save the model with its fast tokenizer (prunelab's commands do)")
    tokenizer = json.loads((directory / "tokenizer.json").read_text())
    if (tokenizer.get("model") or {}).get("type") != "BPE" or \
            (tokenizer.get("decoder") or {}).get("type") != "ByteLevel":
        raise PrunelabError(f"{directory}'s tokenizer is not byte-level BPE, the only kind "
                            "export-gguf writes", "use llama.cpp's own converter for it")
    if not tokenizer["model"].get("merges"):
        raise PrunelabError(f"{directory}'s tokenizer has no merges, which llama.cpp's BPE "
                            "vocabulary needs", "export a model with a trained BPE tokenizer")
    if not list(directory.glob("*.safetensors")):
        raise PrunelabError(f"{directory} has no safetensors weights",
                            "pass a directory written by `prunelab prune --out`")
    return config


def _tokenizer_metadata(writer, directory: Path, config: dict, pre: str) -> None:
    import gguf

    raw = json.loads((directory / "tokenizer.json").read_text())
    n_vocab = int(config["vocab_size"])
    tokens: list[str | None] = [None] * n_vocab
    types = [gguf.TokenType.UNUSED] * n_vocab
    for text, index in raw["model"]["vocab"].items():
        if index < n_vocab:
            tokens[index], types[index] = text, gguf.TokenType.NORMAL
    for added in raw.get("added_tokens") or []:
        if added["id"] < n_vocab:
            tokens[added["id"]] = added["content"]
            types[added["id"]] = (gguf.TokenType.CONTROL if added.get("special")
                                  else gguf.TokenType.USER_DEFINED)
    tokens = [text if text is not None else f"[PAD{i}]" for i, text in enumerate(tokens)]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    special = gguf.SpecialVocab(directory, load_merges=True, n_vocab=n_vocab)
    if "bos" not in special.add_special_token:
        writer.add_add_bos_token(_adds_bos(raw))
    special.add_to_gguf(writer, quiet=True)


def _adds_bos(tokenizer: dict) -> bool:
    """Whether the tokenizer puts a special token before every text (its post-processor's
    template starts with one), which llama.cpp must then add too."""
    post = tokenizer.get("post_processor") or {}
    processors = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    for processor in processors:
        if processor.get("type") == "TemplateProcessing":
            single = processor.get("single") or []
            return bool(single) and "SpecialToken" in single[0]
    return False


def _hyperparameters(writer, config: dict, name: str, file_type) -> None:
    import gguf

    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def rope_theta(config: dict) -> float:
    """The rotary base: under `rope_parameters` (transformers 5) or `rope_theta` (before)."""
    parameters = config.get("rope_parameters") or {}
    return float(parameters.get("rope_theta") or config.get("rope_theta") or 10000.0)


def _permute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of q or k from Hugging Face's rotate-halves order to llama.cpp's interleaved."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _check_shape(gguf_name: str, shape: tuple, config: dict, weights_file: Path) -> None:
    """A block matrix has the shape the config promises llama.cpp (a structurally pruned
    model whose blocks differ cannot be described by one set of hyperparameters)."""
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    expected = {"attn_q.weight": (heads * head_dim, hidden),
                "attn_k.weight": (kv * head_dim, hidden), "attn_v.weight": (kv * head_dim, hidden),
                "attn_output.weight": (hidden, heads * head_dim),
                "ffn_gate.weight": (inter, hidden), "ffn_up.weight": (inter, hidden),
                "ffn_down.weight": (hidden, inter)}
    suffix = gguf_name.split(".", 2)[-1]
    if gguf_name.startswith("blk.") and suffix in expected and tuple(shape) != expected[suffix]:
        raise PrunelabError(f"{weights_file.name}: {gguf_name} is {tuple(shape)}, not the "
                            f"{expected[suffix]} its config describes (blocks of different "
                            "shapes, e.g. after structured pruning, cannot be written as GGUF)",
                            "export a model whose blocks all have the config's shapes")


def _block_matrix(gguf_name: str) -> bool:
    return gguf_name.startswith("blk.") and gguf_name.endswith(".weight") and \
        "norm" not in gguf_name


def export_gguf(directory: str | Path, type: str = "F16", out: str | Path | None = None,
                name: str | None = None) -> GgufExport:
    """Write the model in `directory` as one GGUF file of `type` (F16, Q8_0 or Q4_0), atomically
    (nothing is left behind on failure), and measure how many pruned zeros the codes kept."""
    import gguf
    from gguf.quants import dequantize, quantize
    from safetensors import safe_open

    type = check_gguf_type(type)
    directory = Path(directory)
    config = check_exportable(directory, type)
    out = Path(out) if out is not None else default_output(directory, type)
    arch_name = ARCHITECTURES[config["model_type"]]
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    matrix_type = {"F16": gguf.GGMLQuantizationType.F16,
                   "Q8_0": gguf.GGMLQuantizationType.Q8_0,
                   "Q4_0": gguf.GGMLQuantizationType.Q4_0}[type]
    # the embedding and output head of a 4-bit file at 8 bits (llama.cpp's quantizer keeps
    # them above the body's bits too)
    edge_type = gguf.GGMLQuantizationType.Q8_0 if type == "Q4_0" else matrix_type
    file_type = {"F16": gguf.LlamaFileType.MOSTLY_F16, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                 "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[type]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    source = _source_name(directory)
    pre = PRE_TOKENIZERS["smollm2"] if "smollm" in source.lower() else \
        PRE_TOKENIZERS.get(config["model_type"], "default")

    result = GgufExport(path=out, type=type, architecture=arch_name, file_bytes=0, tensors=0)
    writer = gguf.GGUFWriter(path=None, arch=arch_name)
    _hyperparameters(writer, config, name or directory.name, file_type)
    _tokenizer_metadata(writer, directory, config, pre)
    for weights_file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(weights_file), framework="pt") as tensors:
            for hf_name in tensors.keys():
                gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise PrunelabError(f"{weights_file.name} holds {hf_name}, which has no "
                                        "llama.cpp name", "export an unmodified Llama/Qwen2 "
                                        "layout")
                weight = tensors.get_tensor(hf_name).float().numpy()
                _check_shape(gguf_name, weight.shape, config, weights_file)
                if arch_name == "llama" and gguf_name.endswith("attn_q.weight"):
                    weight = _permute_rotary(weight, heads)
                elif arch_name == "llama" and gguf_name.endswith("attn_k.weight"):
                    weight = _permute_rotary(weight, kv_heads)
                _add_tensor(writer, result, gguf_name, weight, matrix_type, edge_type,
                            quantize, dequantize)
    _write_atomically(writer, out)
    result.file_bytes = out.stat().st_size
    return result


def _add_tensor(writer, result: GgufExport, gguf_name: str, weight: np.ndarray, matrix_type,
                edge_type, quantize, dequantize) -> None:
    import gguf

    result.tensors += 1
    if weight.ndim == 1:
        writer.add_tensor(gguf_name, weight.astype(np.float32))
        return
    qtype = matrix_type if gguf_name.startswith("blk.") else edge_type
    if qtype == gguf.GGMLQuantizationType.F16:
        stored = weight.astype(np.float16)
        restored = stored.astype(np.float32)
        writer.add_tensor(gguf_name, stored)
    else:
        stored = quantize(weight, qtype)
        restored = dequantize(stored, qtype)
        writer.add_tensor(gguf_name, stored, raw_shape=stored.shape, raw_dtype=qtype)
    if _block_matrix(gguf_name):
        zeros = weight == 0
        kept = int((restored[zeros] == 0).sum())
        result.weights += weight.size
        result.pruned_zeros += int(zeros.sum())
        result.zeros_kept += kept
        result.new_zeros += int(((restored == 0) & ~zeros).sum())
        result.per_tensor[gguf_name] = (int(zeros.sum()), kept)


def _write_atomically(writer, out: Path) -> None:
    """Header, metadata and tensors into a temporary file beside `out`, renamed over it only
    when complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.close(descriptor)
    try:
        writer.write_header_to_file(path=Path(temporary))
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(temporary, out)
    except BaseException:
        writer.close()
        Path(temporary).unlink(missing_ok=True)
        raise


def llama_cpp_perplexity(path: str | Path, windows, threads: int | None = None) -> float:
    """Perplexity that llama.cpp (through llama-cpp-python) gives a GGUF file on `windows`
    (token ids [n, seqlen]), scored as prunelab scores them: every position but the first of
    each window predicted from the ones before it."""
    try:
        from llama_cpp import Llama
    except ImportError:
        raise PrunelabError("llama-cpp-python is not installed",
                            "pip install llama-cpp-python (it builds llama.cpp)") from None
    rows = [list(map(int, row)) for row in windows.tolist()]
    llm = Llama(model_path=str(path), n_ctx=len(rows[0]), n_batch=len(rows[0]),
                logits_all=True, verbose=False, n_threads=threads or os.cpu_count())
    total, count = 0.0, 0
    for row in rows:
        llm.reset()
        llm.eval(row)
        logits = np.asarray(llm.scores[: len(row)], dtype=np.float64)
        peak = logits.max(axis=1, keepdims=True)
        log_z = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
        targets = np.asarray(row[1:])
        total += float((log_z[:-1] - logits[np.arange(len(row) - 1), targets]).sum())
        count += len(row) - 1
    llm.close() if hasattr(llm, "close") else None
    return float(np.exp(total / count))


def _source_name(directory: Path) -> str:
    """The model a saved directory came from (prunelab.json), else its folder name."""
    try:
        record = json.loads((directory / "prunelab.json").read_text())
        return str(record["model"]["source"])
    except (OSError, ValueError, KeyError, TypeError):
        return directory.name


__all__ = ["ARCHITECTURES", "GGUF_TYPES", "GgufExport", "check_exportable", "default_output",
           "export_gguf", "llama_cpp_perplexity"]
