"""Pruning against quantization: which kind of compression each arm is, and, per family,
whether the difficulty ordering ("harder drops more") holds for pruning, quantization, both
or neither, read from the report's verdicts."""

from __future__ import annotations

import math
from collections import defaultdict

KINDS = ("pruning", "quantization", "prune + quantize")


def stage_kind(stage: dict) -> set[str]:
    """What one stored stage config does: {"pruning"}, {"quantization"} or both."""
    from prunelab.methods.registry import METHODS
    import prunelab.methods  # noqa: F401  (registers the built-in methods)

    method = METHODS.get(stage.get("method", ""))
    options = stage.get("options") or {}
    done = set()
    if method is not None and method.quantizes:
        done.add("quantization")
    else:
        if options.get("bits") not in (None, "none", "None"):
            done.add("quantization")  # SparseGPT's joint mode
        if stage.get("sparsity") or stage.get("pattern"):
            done.add("pruning")
    return done


def arm_kinds(points: list[dict]) -> dict[str, str]:
    """Arm -> "pruning", "quantization" or "prune + quantize" (dense left out)."""
    out: dict[str, str] = {}
    for p in points:
        if p["method"] == "dense" or p["arm"] in out:
            continue
        done = set().union(*(stage_kind(s) for s in p["stages"])) if p["stages"] else set()
        if done == {"pruning"}:
            out[p["arm"]] = "pruning"
        elif done == {"quantization"}:
            out[p["arm"]] = "quantization"
        elif done:
            out[p["arm"]] = "prune + quantize"
    return out


def ordering_by_kind(verdicts: list[dict], kinds: dict[str, str]) -> list[dict]:
    """Per model and family: does the ordering hold for pruning, for quantization, both,
    neither? It holds for a kind when some arm of that kind has the verdict "harder drops
    more" (Holm-adjusted across the report). Each kind's arms are listed with their slope
    and adjusted p, so the answer can be checked."""
    by_family: dict[tuple[str, str], dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for v in verdicts:
        kind = kinds.get(v["arm"])
        if kind is not None:
            by_family[(v["model"], v["family"])][kind].append(v)
    rows = []
    for (model, family), groups in by_family.items():
        if not groups.get("pruning") or not groups.get("quantization"):
            continue
        holds = {k: any(v["verdict"] == "harder drops more" for v in groups.get(k, []))
                 for k in KINDS}
        answer = ("both" if holds["pruning"] and holds["quantization"] else
                  "pruning only" if holds["pruning"] else
                  "quantization only" if holds["quantization"] else "neither")
        row = {"model": model, "family": family, "answer": answer}
        for kind in KINDS:
            row[kind] = "; ".join(f"{v['arm']}: {v['verdict']}, slope {_num(v['slope'])}, "
                                  f"p {_num(v.get('p_holm'))}" for v in groups.get(kind, []))
        rows.append(row)
    return rows


def _num(x) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.3f}"
