"""lm-evaluation-harness, both ways (optional: `pip install 'prunelab[lmeval]'`).

- `run_lmeval(loaded, tasks)`: run lm-eval tasks on an in-memory prunelab model (a pruned
  model need not be saved first): lm-eval's HFLM accepts a loaded `PreTrainedModel`.
- `export_tasks(tasks, out_dir)`: write prunelab tasks as lm-eval task YAML plus JSONL
  data, one folder per task. Prompts are rendered by prunelab (demonstrations included,
  so lm-eval runs them with num_fewshot 0) and continuations carry their own leading
  space (target_delimiter ""), so lm-eval scores exactly the strings prunelab scores.

Differences to know: lm-eval's `acc` decides by summed log-prob (prunelab's default is the
mean per token; compare with prunelab's `choice_scores_sum`), and its exact_match on an
exported generation task checks the first target only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from prunelab import defaults
from prunelab.errors import PrunelabError
from prunelab.paths import atomic_file
from prunelab.tasks.base import Task, split_whitespace


def require_lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise PrunelabError("lm-evaluation-harness is not installed",
                            "pip install 'prunelab[lmeval]' (lm-eval>=0.4.5)") from None
    return lm_eval


def lmeval_name(task: Task) -> str:
    """lm-eval task names: letters, digits and underscores ("arithmetic:3" -> "prunelab_arithmetic_3")."""
    return "prunelab_" + re.sub(r"[^A-Za-z0-9_]+", "_", task.name).strip("_")


def hflm(loaded, *, batch_size: int = defaults.EVAL_BATCH_SIZE):
    """An lm-eval HFLM wrapping the loaded model and tokenizer as they are (no copy, no save)."""
    require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    device = str(next(loaded.model.parameters()).device)
    return HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size,
                device=device, max_length=loaded.max_length, add_bos_token=loaded.add_bos)


def run_lmeval(loaded, tasks: list[str], *, include_path: str | Path | None = None,
               limit: int | None = None, num_fewshot: int | None = None,
               batch_size: int = defaults.EVAL_BATCH_SIZE,
               log_samples: bool = False, include_defaults: bool | None = None) -> dict:
    """Run lm-eval tasks on a loaded (possibly pruned) model; returns lm-eval's result dict.

    include_path: a folder of task YAML (e.g. written by `export_tasks`). When given, lm-eval's
    own task library is not indexed unless include_defaults=True (indexing it takes a while
    and is not needed for local tasks).
    """
    lm_eval = require_lm_eval()
    from lm_eval.tasks import TaskManager

    if include_defaults is None:
        include_defaults = include_path is None
    manager = TaskManager(include_path=str(include_path) if include_path else None,
                          include_defaults=include_defaults)
    results = lm_eval.simple_evaluate(model=hflm(loaded, batch_size=batch_size), tasks=list(tasks),
                                      task_manager=manager, limit=limit, num_fewshot=num_fewshot,
                                      log_samples=log_samples, bootstrap_iters=0)
    if results is None:  # lm-eval returns None on non-zero ranks only
        raise PrunelabError("lm-eval returned no results", "run in a single process")
    return results


def _rows(task: Task, limit: int | None, seed: int) -> list[dict]:
    rows = []
    for item in task.select(limit, seed):
        if task.kind == "rolling":
            rows.append({"id": item.id, "text": item.text})
            continue
        prompt = task.prompt(item, seed)
        if task.kind == "mc":
            pairs = [split_whitespace(prompt, task.template.continuation(c)) for c in item.choices]
            rows.append({"id": item.id, "prompt": pairs[0][0], "choices": [c for _, c in pairs],
                         "gold": item.gold[0]})
        else:
            rows.append({"id": item.id, "prompt": prompt.rstrip(" "), "target": item.targets[0],
                         "targets": list(item.targets)})
    return rows


def _config(task: Task, data: Path) -> dict:
    base = {"task": lmeval_name(task), "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
            "test_split": "test", "num_fewshot": 0,
            "metadata": {"version": 1, "prunelab_task": task.name, "family": task.family,
                         "axis": task.axis, "level": str(task.level),
                         "level_rank": task.level_rank, "license": task.license}}
    if task.kind == "mc":
        metric = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
        return {**base, "output_type": "multiple_choice", "doc_to_text": "prompt",
                "doc_to_choice": "choices", "doc_to_target": "gold", "target_delimiter": "",
                "metric_list": metric}
    if task.kind == "generate":
        metric = [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                   "ignore_case": True, "ignore_punctuation": True}]
        return {**base, "output_type": "generate_until", "doc_to_text": "prompt",
                "doc_to_target": "target", "target_delimiter": "",
                "generation_kwargs": {"until": ["\n"], "do_sample": False,
                                      "max_gen_toks": task.max_new_tokens},
                "metric_list": metric}
    metric = [{"metric": m, "aggregation": agg, "higher_is_better": False}
              for m, agg in (("word_perplexity", "weighted_perplexity"),
                             ("byte_perplexity", "weighted_perplexity"),
                             ("bits_per_byte", "bits_per_byte"))]
    return {**base, "output_type": "loglikelihood_rolling", "doc_to_text": "",
            "doc_to_target": "text", "metric_list": metric}


def export_tasks(tasks: list[Task], out_dir: str | Path, *, limit: int | None = None,
                 seed: int = 0) -> list[Path]:
    """Write each task as `<out_dir>/<lm-eval name>/{<name>.yaml, test.jsonl}`; returns the YAMLs.

    Point lm-eval at it with `--include_path out_dir` (or `run_lmeval(include_path=...)`).
    """
    import yaml

    out_dir = Path(out_dir)
    written = []
    for task in tasks:
        name = lmeval_name(task)
        folder = out_dir / name
        data = folder / "test.jsonl"
        rows = _rows(task, limit, seed)
        with atomic_file(data) as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        config = folder / f"{name}.yaml"
        with atomic_file(config) as handle:
            yaml.safe_dump(_config(task, data), handle, sort_keys=False, allow_unicode=True)
        written.append(config)
    return written
