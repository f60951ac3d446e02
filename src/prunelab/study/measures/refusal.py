"""Refusal under jailbreak templates and over-refusal of benign requests, recipe `refusal:`
(`prunelab.evaluate.refusal`), on every model of the study, dense included: the baseline of
every refusal curve. A judge model, when named, is loaded once per study."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from prunelab.study.measures import Measure, register_measure

# A refusal run: ~105 prompts of ~80 tokens, answered token by token (a cache helps).
PROMPTS, PROMPT_TOKENS, TOKENS_PER_ANSWER_TOKEN = 105, 80, 4


class Refusal(BaseModel):
    """Refusal under jailbreak templates and over-refusal of benign requests, measured on
    every model of the study, dense included (`prunelab.evaluate.refusal`; None: the
    built-in sets)."""

    model_config = ConfigDict(extra="forbid")
    requests: str | None = None
    templates: str | None = None
    benign: str | None = None
    judge: str | None = None  # a model (zoo name or directory) that judges every answer too
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(8, ge=1)


@register_measure
class RefusalMeasure(Measure):
    name = "refusal"
    recipe_field = "refusal"
    section = Refusal  # its report sections: prunelab/report/refusal.py

    def check(self, config) -> list[tuple[str, str]]:
        """The request and template files, and the judge, before any model is loaded."""
        from prunelab.errors import PrunelabError
        from prunelab.evaluate.refusal import load_requests, load_templates
        from prunelab.study.models import model_problem

        problems = []
        for field, load in (("requests", load_requests), ("templates", load_templates),
                            ("benign", lambda p: load_requests(p, benign=True))):
            try:
                load(getattr(config, field))
            except PrunelabError as exc:
                problems.append((f"refusal.{field}", exc.problem))
        if config.judge is not None:
            problem = model_problem(config.judge)
            if problem:
                problems.append(("refusal.judge", problem))
        return problems

    def run(self, backend, handle, config, work=None) -> dict:
        from prunelab.evaluate.refusal import evaluate_refusal, load_requests, load_templates

        judge = None
        if config.judge is not None:  # loaded once per study, not once per model judged
            cached = backend.cache.get("refusal judge")
            if cached is None or cached[0] != config.judge:
                cached = (config.judge, backend.load_model(config.judge))
                backend.cache["refusal judge"] = cached
            judge = cached[1]
        result = evaluate_refusal(handle.loaded, load_requests(config.requests),
                                  load_templates(config.templates),
                                  load_requests(config.benign, benign=True),
                                  max_new_tokens=config.max_new_tokens,
                                  batch_size=config.batch_size, judge=judge)
        return {"summary": result.summary, "rows": result.rows}

    def fake(self, backend, handle, config, work=None) -> dict:
        return backend.refusal(handle, config)

    def cost(self, recipe, config, point, per_token, params, task=None) -> float:
        return (PROMPTS * (PROMPT_TOKENS + TOKENS_PER_ANSWER_TOKEN * config.max_new_tokens)
                * per_token)

    def export(self, data) -> dict:
        """Each set and template's rates (and the judge's, when there is one)."""
        return {f"{e['set']}/{e['template']}.{k}": v for e in data["summary"]
                for k, v in e.items() if k not in ("set", "template")}
