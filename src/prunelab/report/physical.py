"""The report's physical account: bytes on disk dense and compact beside the quality loss
(measure `physical_account`, prunelab/study/measures/physical.py)."""

from __future__ import annotations

from prunelab.report.fmt import num as _num, section
from prunelab.report.sections import register_section
from prunelab.study.plan import describe_compression


@register_section(order=105)
def physical_account_section(run) -> list[dict]:
    measured = [c for c in run.compressions if c.get("physical_account")]
    if not measured:
        return []
    first = measured[0]["physical_account"]
    sec = section("Physical account")
    sec["text"].append(
        f"Bytes of each model's weights stored dense and compact ({first['values']} values, "
        f"{first['layout']} layout: each pruned matrix as its kept values and where they are; "
        "see the compact checkpoints guide), beside its perplexity. Embeddings and the head "
        "are not pruned and stay dense, so the whole model shrinks less than its prunable "
        "matrices. A smaller file is not a faster model: no speed-up is measured here.")
    rows = []
    for c in measured:
        a = c["physical_account"]
        rows.append([c["model"], describe_compression(c["config"]), _num(c.get("perplexity"), 2),
                     _num(a["dense_bytes"] / 1e6, 1), _num(a["compact_bytes"] / 1e6, 1),
                     _num(a["dense_bytes"] / a["compact_bytes"], 2) + "x",
                     _num(a["prunable_dense_bytes"] / a["prunable_compact_bytes"], 2) + "x",
                     a.get("pattern") or "–"])
    sec["tables"].append(("Bytes on disk", ["model", "stages", "perplexity", "dense MB",
                                            "compact MB", "whole model", "prunable matrices",
                                            "N:M stored"], rows))
    return [sec]
