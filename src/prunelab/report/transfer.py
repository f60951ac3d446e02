"""The report's transfer section: can fine-tuning bring a pruned model back? Each transfer
setting's share of Dense Transfer, the irreversibility of sparse transfer's loss, and the
encoder track's fine-tunings."""

from __future__ import annotations

import math

from prunelab.report.fmt import pct as _pct
from prunelab.report.sections import Section, Table


def transfer_section(run) -> Section | None:
    a = run.analysis
    if not a.transfer:
        return None
    keys = {p["key"] for p in run.points}  # this recipe's points, not older copies
    trainings = {k: t for k, t in run.store.trainings().items() if k in keys}
    return _transfer_section(a, trainings, _trained_shares(run))


def _trained(share: float | None) -> str:
    """A share of parameters trained: small ones (PERP's biases and norms) keep two decimals."""
    return "–" if share is None else f"{share:.0%}" if share >= 0.995 else f"{share:.2%}"


def _pct_ci(pair) -> str:
    if pair is None or not all(math.isfinite(v) for v in pair):
        return "–"
    return f"[{_pct(pair[0])}, {_pct(pair[1])}]"


def _trained_shares(run) -> dict[tuple[str, str, float], float]:
    """(model, arm, x) -> the share of parameters its transfer stage trained (PERP's subsets
    and adapters train few; the four settings train every parameter they do not hold)."""
    out = {}
    for p in run.points:
        compression = run.compression_of(p)
        share = ((compression or {}).get("result") or {}).get("trainable_fraction")
        if share is not None:
            out[(p["model"], p["arm"], p["x"])] = share
    return out


def _transfer_section(a, trainings: dict[str, dict],
                      trained: dict[tuple[str, str, float], float]) -> Section:
    section = Section("Can fine-tuning bring it back?")
    section.text.append(
        "Each transfer setting's score as a share of Dense Transfer (the dense model fine-tuned "
        "the same way), per task level and sparsity, with 95% bootstrap intervals over items "
        "and seeds. sparse: pruned weights held at zero while fine-tuning; sparse-to-dense: "
        "pruned once, then all weights train and may regrow; freeze: the weights pruning "
        "would remove keep their pre-trained values, the rest train.")
    section.tables.append(Table("% of Dense Transfer", ["model", "task", "setting", "arm",
                                                        "sparsity", "parameters trained",
                                                        "of dense transfer", "95% CI"],
                                [[r["model"], r["task"], r["setting"], r["arm"], _pct(r["x"]),
                                  _trained(trained.get((r["model"], r["arm"], r["x"]))),
                                  _pct(r["of_dense_transfer"]),
                                  _pct_ci(r["ci"])]
                                 for r in a.transfer]))
    if a.recovery:
        section.text.append(
            "Irreversibility: the share of sparse transfer's loss that sparse-to-dense gives "
            "back ((s2d − sparse) / (1 − sparse), on shares of Dense Transfer; shown only where "
            "sparse transfer credibly lost something), and what freeze keeps.")
        section.tables.append(Table("Irreversibility", ["model", "task", "sparsity",
                                                        "gap closed by sparse-to-dense",
                                                        "95% CI", "freeze keeps", "95% CI"],
                                    [[r["model"], r["task"], _pct(r["x"]),
                                      _pct(r.get("gap_closed")),
                                      _pct_ci(r.get("gap_closed_ci")),
                                      _pct(r.get("freeze_keeps")),
                                      _pct_ci(r.get("freeze_keeps_ci"))]
                                     for r in a.recovery]))
    if trainings:  # the encoder track's per-level fine-tunings
        runs = list(trainings.values())
        held = [t for t in runs if t.get("setting") == "sparse"]
        text = (f"{len(runs)} fine-tunings of task levels, {sum(t['steps'] for t in runs):,} "
                f"steps in {sum(t['seconds'] for t in runs) / 60:.1f} min of training")
        if held:
            regrown = sum(t["masked_nonzero"] for t in held)
            total = sum(t["masked_weights"] for t in held)
            text += (f"; the {len(held)} sparse ones held {total:,} pruned weights in all, "
                     f"{regrown} of them nonzero at the end")
        section.text.append(text + ".")
    return section
