"""Checks of a model directory before and while it loads: each damaged or contradictory file
refused in one line that names it (config.json, the weight files' headers and their shapes
against the config, the tokenizer, code the model needs), and loading failures translated
into the same one-line form."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch

from prunelab.errors import PrunelabError
from prunelab.zoo.weights import check_weight_files


# Any of these makes a directory's tokenizer loadable (which of them depends on its kind).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                   "vocab.txt", "spiece.model", "sentencepiece.bpe.model")


def check_model_directory(directory: Path, *, trust_remote_code: bool = False) -> None:
    """Refuse, in one line naming the file, a model directory that cannot load as it is:
    config.json unreadable, code it needs but may not run, no tokenizer, damaged or missing
    weight files, or weights whose shapes config.json contradicts. Reads only small files
    and the weight files' headers."""
    directory = Path(directory)
    config = _read_config(directory / "config.json")
    _check_code(directory, config, trust_remote_code)
    from prunelab.quant_export import check_packed_loads

    check_packed_loads(directory)  # an asymmetric packed grid: transformers cannot read it
    if not any((directory / name).exists() for name in TOKENIZER_FILES):
        raise PrunelabError(
            f"{directory} has no tokenizer (none of {', '.join(TOKENIZER_FILES[:3])}, ...)",
            "save the tokenizer of the model these weights came from into it, with "
            "its tokenizer's save_pretrained")
    shapes = check_weight_files(directory)
    from prunelab.compact import check_compact_directory, is_compact

    if is_compact(directory):  # packed matrices: their own checks, not the config's shapes
        check_compact_directory(directory, shapes)
        return
    _check_shapes(directory, config, shapes)


_RESTORE_CONFIG = "restore the config.json saved with these weights"
_RESTORE_WEIGHTS = ("the files may be damaged: restore them, or re-save the model with "
                    "save_pretrained")


def _read_config(path: Path) -> dict:
    raw = path.read_bytes()
    try:
        config = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PrunelabError(f"{path} is not UTF-8 text (byte {raw[exc.start]:#04x} at offset "
                            f"{exc.start})", _RESTORE_CONFIG) from None
    except json.JSONDecodeError as exc:
        raise PrunelabError(f"{path} is not valid JSON: {exc.msg} (line {exc.lineno}, column "
                            f"{exc.colno})", _RESTORE_CONFIG) from None
    if not isinstance(config, dict):
        raise PrunelabError(f"{path} is not a JSON object", _RESTORE_CONFIG)
    if not isinstance(config.get("model_type"), str):
        raise PrunelabError(f"{path} has no model_type", _RESTORE_CONFIG)
    return config


def _check_code(directory: Path, config: dict, trust_remote_code: bool) -> None:
    """A model type transformers lacks loads only through the directory's own Python files."""
    from transformers import __version__ as transformers_version
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = config["model_type"]
    if model_type in CONFIG_MAPPING_NAMES:
        return  # built in: loads without running the directory's code, auto_map or not
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict) or not auto_map:
        raise PrunelabError(
            f"{directory / 'config.json'}: model_type {model_type!r} is not one transformers "
            f"{transformers_version} knows, and the directory brings no code for it",
            "correct model_type, or install a transformers version that has it")
    references = [ref for value in auto_map.values()
                  for ref in (value if isinstance(value, list) else [value])
                  if isinstance(ref, str) and "--" not in ref]  # "org/repo--x.Y": elsewhere
    files = sorted({ref.split(".")[0] + ".py" for ref in references})
    if not trust_remote_code:
        raise PrunelabError(
            f"{directory} needs its own Python code to load ({', '.join(files) or 'auto_map'}; "
            f"model_type {model_type!r} is not built into transformers)",
            "pass --trust-remote-code, or trust_remote_code=True in Python, if you trust that code")
    missing = [name for name in files if not (directory / name).is_file()]
    if missing:
        raise PrunelabError(f"{directory / 'config.json'} loads its model from "
                            f"{', '.join(missing)}, which {directory} lacks",
                            "copy the model's Python files into the directory")


def _check_shapes(directory: Path, config: dict, shapes: dict[str, tuple[str, tuple]]) -> None:
    """Compare each stored tensor's shape with the one config.json gives the model.

    The model is built on the meta device (no memory, no weights); tensors whose names the
    model does not use are left to the loader. Skipped where the stored shapes are not the
    model's own: quantized checkpoints (packed), structurally pruned ones (per-layer shapes,
    checked by their loader) and models built by their own code.
    """
    from prunelab.ssm import STRUCTURE_KEY as SSM_STRUCTURE_KEY
    from prunelab.structure import STRUCTURE_KEY

    if not shapes or {"quantization_config", STRUCTURE_KEY, SSM_STRUCTURE_KEY,
                      "auto_map"} & set(config):
        return
    try:
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

        parsed = AutoConfig.from_pretrained(directory)
        architectures = getattr(parsed, "architectures", None) or []
        causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            skeleton = (AutoModelForCausalLM if causal else AutoModel).from_config(parsed)
    except Exception:  # a config the model cannot be built from: the load itself says why
        return
    wrong = [(name, shapes[name], tuple(tensor.shape))
             for name, tensor in skeleton.state_dict().items()
             if name in shapes and shapes[name][1] != tuple(tensor.shape)]
    if wrong:
        name, (file, found), expected = wrong[0]
        more = f" ({len(wrong)} tensors differ)" if len(wrong) > 1 else ""
        raise PrunelabError(f"{directory / 'config.json'} does not match the weights: {file} "
                            f"holds {name} as {list(found)}, the config implies "
                            f"{list(expected)}{more}", _RESTORE_CONFIG)


def check_vocabulary(tokenizer, config, source: str | Path) -> None:
    """A tokenizer whose own vocabulary (added tokens aside) outnumbers the model's embedding
    rows belongs to another model: ordinary text would give ids the model has no row for."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    rows = getattr(config, "vocab_size", None)
    if backend is None or not isinstance(rows, int):
        return
    words = backend.get_vocab_size(with_added_tokens=False)
    if words > rows:
        raise PrunelabError(f"the tokenizer of {source} has {words:,} tokens but its model "
                            f"only {rows:,} embedding rows: the tokenizer belongs to another "
                            "model", "restore the tokenizer files saved with these weights")


def check_loading_info(loading: dict, source: str | Path) -> None:
    """A causal LM whose checkpoint lacks a tensor would run with it random; one with extra
    tensors (more layers than config.json says) would run as a smaller model. Both refused.
    """
    missing = sorted(loading.get("missing_keys") or ())
    unexpected = sorted(key for key in loading.get("unexpected_keys") or ()
                        if key.endswith((".weight", ".bias")))  # not stray buffers
    if missing:
        raise PrunelabError(f"the weights of {source} lack {len(missing)} tensor(s) its "
                            f"config.json calls for ({_some(missing)}): they would start random",
                            "restore the weight files and config.json saved together")
    if unexpected:
        raise PrunelabError(f"the weights of {source} hold {len(unexpected)} tensor(s) its "
                            f"config.json has no place for ({_some(unexpected)})",
                            _RESTORE_CONFIG)


def _some(names: list[str], count: int = 3) -> str:
    return ", ".join(names[:count]) + (", ..." if len(names) > count else "")


def load_failure(exc: Exception, source: str | Path, local: Path | None,
                  part: str) -> PrunelabError:
    """One line for an exception from transformers' loaders, with the fix that goes with it."""
    text = str(exc)
    if "custom code" in text or "trust_remote_code" in text:
        return PrunelabError(f"{source} needs its own Python code to load its {part}",
                             "pass --trust-remote-code, or trust_remote_code=True in Python, "
                             "if you trust that code")
    pickled_only = (part == "weights" and local is not None and any(local.glob("*.bin"))
                    and not any(local.glob("*.safetensors")))
    if (pickled_only or isinstance(exc, pickle.UnpicklingError) or "weights_only" in text
            or "PytorchStreamReader" in text):  # torch.load's answers; never quote their advice
        where = ", ".join(p.name for p in sorted(local.glob("*.bin"))) if local else "its weights"
        unsafe = re.search(r"GLOBAL (\S+)", text)
        if unsafe:
            return PrunelabError(
                f"{source}: {where} holds pickled objects other than tensors (it names "
                f"{unsafe.group(1)}); prunelab reads only plain tensors from a pickle and never "
                "runs its code", "use the model's safetensors files instead")
        return PrunelabError(f"{source}: {where} is not a readable PyTorch checkpoint "
                             "(damaged or truncated)", _RESTORE_WEIGHTS)
    if "ignore_mismatched_sizes" in text or "size mismatch" in text:
        return PrunelabError(f"the weights of {source} do not fit the shapes its config.json "
                             "gives", _RESTORE_CONFIG)
    first = _first_line(exc)
    if part == "tokenizer":
        return PrunelabError(f"the tokenizer of {source} does not load: {first}",
                             "restore its tokenizer files (tokenizer.json, "
                             "tokenizer_config.json) from the model it came from")
    if part == "config":
        if local is None:
            return PrunelabError(f"could not load model config from {source}: {first}",
                                 "pass a model name from `prunelab models` or a local directory")
        return PrunelabError(f"{local / 'config.json'} does not load: {first}", _RESTORE_CONFIG)
    return PrunelabError(f"could not load the weights of {source}: {type(exc).__name__}: {first}",
                         _RESTORE_WEIGHTS)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].endswith(":") and len(lines) > 1:  # "Validation error for field 'x':" + why
        return f"{lines[0]} {lines[1]}"
    return lines[0]
