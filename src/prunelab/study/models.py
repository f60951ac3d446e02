"""What a recipe's model names can be told before any is loaded: whether one exists (a zoo
name, a model `prunelab train-tiny` keeps in the cache, or a model directory) and whether it
is an encoder."""

from __future__ import annotations


def model_problem(model: str) -> str | None:
    from pathlib import Path

    from prunelab.zoo.models import ZOO, trained_here

    if model in ZOO or trained_here(model) or Path(model).expanduser().is_dir():
        return None
    return (f"unknown model {model!r}: use one of {', '.join(ZOO)}, a model trained here "
            "(`prunelab train-tiny`, listed by `prunelab models`) or a local model directory")


def is_encoder_model(model: str) -> bool | None:
    """Whether a recipe's model is an encoder (zoo kind, or a directory's config.json);
    None when that cannot be told without loading it."""
    import json
    from pathlib import Path

    from prunelab.zoo.models import ZOO

    if model in ZOO:
        return ZOO[model].kind == "encoder"
    from prunelab.zoo.models import model_dir, trained_here

    directory = model_dir(model) if trained_here(model) else Path(model).expanduser()
    config = directory / "config.json"
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except (OSError, ValueError):
        return None
    return not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
