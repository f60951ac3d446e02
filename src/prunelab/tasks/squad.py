"""Open-book vs closed-book QA on SQuAD v1.1 dev questions, and context length by distractors.

Two families over the same questions:
- squad_book: the gold paragraph given ("open") or not ("closed"). Junk DNA's finding:
  pruning hurts closed-book QA (knowledge in the weights) far more than open-book.
- squad_context: the gold paragraph among k = 0, 1, 2, 4 other paragraphs of the same
  article (a retrieval setting; longer, more confusable context is harder).
Scored as the Junk DNA code scores open/closed-book QA: greedy generation, first line,
lenient match (either string contains the other after normalisation); exact match and
token F1 are recorded too.
"""

from __future__ import annotations

import random
from functools import lru_cache

from prunelab.tasks.base import Item, Task, Template, stable_hash
from prunelab.tasks.loaders import read_json

SQUAD_LICENSE = "CC BY-SA 4.0 (SQuAD v1.1, Rajpurkar et al. 2016)"
SQUAD_SOURCE = "BIG-bench squad_shifts/squaddev_v1.1.json (the SQuAD v1.1 dev set)"
DISTRACTORS = (0, 1, 2, 4)

OPEN = Template(input_format="{context}\n\nQuestion: {input}\nAnswer:", answer_format=" {answer}",
                prefix="Answer the question with a few words from the text.\n\n")
CLOSED = Template(input_format="Question: {input}\nAnswer:", answer_format=" {answer}",
                  prefix="Answer the question with a few words.\n\n")


@lru_cache(maxsize=1)
def squad_questions() -> tuple[tuple[dict, ...], tuple[tuple[str, ...], ...]]:
    """(questions, paragraphs per article); each question knows its article and paragraph."""
    from prunelab.data.bigbench import task_dir

    data = read_json(str(task_dir("squad_shifts") / "squaddev_v1.1.json"))
    questions, articles = [], []
    for a, article in enumerate(data["data"]):
        paragraphs = tuple(p["context"] for p in article["paragraphs"])
        articles.append(paragraphs)
        for p, paragraph in enumerate(article["paragraphs"]):
            for qa in paragraph["qas"]:
                answers = tuple(dict.fromkeys(ans["text"] for ans in qa["answers"]))
                if answers:
                    questions.append({"id": qa["id"], "question": qa["question"].strip(),
                                      "answers": answers, "article": a, "paragraph": p})
    return tuple(questions), tuple(articles)


def squad_items(distractors: int | None) -> list[Item]:
    """None = closed book; k = gold paragraph at a seeded place among k same-article others."""
    questions, articles = squad_questions()
    items = []
    for q in questions:
        context = ""
        if distractors is not None:
            paragraphs = articles[q["article"]]
            others = [i for i in range(len(paragraphs)) if i != q["paragraph"]]
            rng = random.Random(stable_hash("squad", q["id"]))
            # A prefix of one seeded permutation: k=1's distractor is among k=2's, and so on.
            rng.shuffle(others)
            chosen = others[:distractors]
            chosen.insert(rng.randrange(len(chosen) + 1), q["paragraph"])
            context = "\n\n".join(paragraphs[i] for i in chosen)
        items.append(Item(id=q["id"], input=q["question"], targets=q["answers"], context=context))
    return items


def squad_tasks() -> list[Task]:
    common = dict(kind="generate", metric="contains", max_new_tokens=24, license=SQUAD_LICENSE,
                  source=SQUAD_SOURCE, selection_key="squad", paired_levels=True)
    tasks = [
        Task(name="squad_book:open", family="squad_book", axis="book", level="open", level_rank=0,
             loader=lambda: squad_items(0), template=OPEN,
             description="SQuAD question with its gold paragraph", **common),
        Task(name="squad_book:closed", family="squad_book", axis="book", level="closed",
             level_rank=1, loader=lambda: squad_items(None), template=CLOSED,
             description="SQuAD question without any paragraph", **common),
    ]
    for rank, k in enumerate(DISTRACTORS):
        tasks.append(Task(
            name=f"squad_context:{k}", family="squad_context", axis="distractors", level=k,
            level_rank=rank, loader=lambda k=k: squad_items(k), template=OPEN,
            description=f"gold paragraph among {k} other paragraphs of the same article",
            **common))
    return tasks
