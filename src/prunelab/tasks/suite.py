"""The built-in task suite: families of tasks whose levels differ along one difficulty axis.

Most families here are built from data in the BIG-bench archive (`prunelab.data.bigbench`,
attribution in `ATTRIBUTION`), which the package registry no longer serves: they need a
local copy (PRUNELAB_BIGBENCH) and are marked `needs_bigbench`. Families that need no
BIG-bench: generated arithmetic (`prunelab.tasks.synthetic_arithmetic`: digits, shots,
options) and Django's interface messages in eleven languages (`prunelab.tasks.ui_messages`).

`level_rank` orders levels by the Junk DNA paper's reading of difficulty: higher = harder
(more digits, more objects, fewer demonstrations, more options, less context, a minority
language, generation rather than choice).
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

from prunelab.tasks.base import Item, Task, Template, stable_hash
from prunelab.tasks.loaders import bigbench_generate, bigbench_mc
from prunelab.tasks.synthetic_arithmetic import DIGITS, synthetic_arithmetic_items
from prunelab.tasks.synthetic_arithmetic import LICENSE as SYNTH_LICENSE
from prunelab.tasks.synthetic_arithmetic import SOURCE as SYNTH_SOURCE

BIGBENCH = "BIG-bench (Srivastava et al. 2022), bigbench==1.0.0 on PyPI"
APACHE = "Apache-2.0 (BIG-bench)"


def _bb(*parts: str) -> Path:
    from prunelab.data.bigbench import task_dir  # lazy: listing tasks needs no download

    return task_dir(parts[0]).joinpath(*parts[1:], "task.json")


# --- 1. arithmetic: digits 1..5, addition + subtraction + multiplication -------------------
ARITH_OPS = ("addition", "subtraction", "multiplication")


@lru_cache(maxsize=8)
def arithmetic_items(digits: int) -> tuple[Item, ...]:
    items: list[Item] = []
    for op in ARITH_OPS:
        items += bigbench_mc(_bb("arithmetic", f"{digits}_digit_{op}"), id_prefix=f"{op[:3]}-")
    return tuple(items)


def arithmetic_tasks() -> list[Task]:
    return [
        Task(name=f"arithmetic:{d}", family="arithmetic", axis="digits", level=d, level_rank=d - 1,
             kind="mc", loader=lambda d=d: arithmetic_items(d), template=Template(),
             license=APACHE, source=f"{BIGBENCH}: arithmetic/{d}_digit_{{addition,subtraction,"
             "multiplication}",
             description=f"{d}-digit +, -, x; 7 choices: 5 numbers, 'banana', 'house'")
        for d in range(1, 6)
    ]


# --- 2. logical_deduction and tracking_shuffled_objects: 3 / 5 / 7 objects ------------------
OBJECTS = {3: "three_objects", 5: "five_objects", 7: "seven_objects"}
LOGIC_PREFIX = ("The following paragraphs each describe a set of {n} objects arranged in a fixed "
                "order. The statements are logically consistent within each paragraph.\n\n")


def object_tasks() -> list[Task]:
    tasks = []
    for rank, (n, folder) in enumerate(OBJECTS.items()):
        tasks.append(Task(
            name=f"logical_deduction:{n}", family="logical_deduction", axis="objects", level=n,
            level_rank=rank, kind="mc",
            loader=lambda folder=folder: bigbench_mc(_bb("logical_deduction", folder)),
            # BIG-bench's own format: the choice is a whole statement following the paragraph.
            template=Template(input_format="{input}", answer_format=" {answer}",
                              prefix=LOGIC_PREFIX.format(n=folder.split("_")[0])),
            license=APACHE, source=f"{BIGBENCH}: logical_deduction/{folder}",
            description=f"order {n} objects from clues; choose the true statement"))
        tasks.append(Task(
            name=f"tracking_shuffled_objects:{n}", family="tracking_shuffled_objects",
            axis="objects", level=n, level_rank=rank, kind="mc",
            loader=lambda folder=folder: bigbench_mc(_bb("tracking_shuffled_objects", folder)),
            # The input ends "... Alice has the "; the trailing space moves to the choice.
            template=Template(input_format="{input}", answer_format="{answer}",
                              separator="\n\n\n"),
            license=APACHE, source=f"{BIGBENCH}: tracking_shuffled_objects/{folder}",
            description=f"{n} players swap objects; who holds what at the end"))
    return tasks


# --- 4. in-context examples: k = 0, 1, 2, 4, 8 on the same items ---------------------------
SHOTS = (8, 4, 2, 1, 0)  # in order of difficulty: more demonstrations = easier


def shots_tasks() -> list[Task]:
    # Two-digit arithmetic: short prompts, so eight demonstrations stay cheap, and the model
    # is between chance and ceiling, where demonstrations can move it.
    return [
        Task(name=f"arithmetic_shots:{k}", family="arithmetic_shots", axis="shots", level=k,
             level_rank=rank, kind="mc", shots=k, loader=lambda: arithmetic_items(2),
             template=Template(separator="\n"), license=APACHE,
             source=f"{BIGBENCH}: arithmetic/2_digit_*", selection_key="arithmetic_shots",
             paired_levels=True,
             description=f"2-digit arithmetic with {k} seeded demonstrations")
        for rank, k in enumerate(SHOTS)
    ]


# --- 5. number of options: 2, 4, or all of the same items' choices -------------------------
def restrict_options(items: tuple[Item, ...], k: int | None) -> list[Item]:
    """Keep the first correct choice and k-1 wrong ones (all when k is None).

    The wrong choices kept are a prefix of a permutation seeded by the item id, so the
    2-option item's choices are a subset of the 4-option item's. File order is kept.
    """
    out = []
    for item in items:
        if k is None:
            out.append(item)
            continue
        right = item.gold[0]
        wrong = [i for i in range(len(item.choices)) if i not in item.gold]
        random.Random(stable_hash("options", item.id)).shuffle(wrong)
        keep = sorted([right] + wrong[: k - 1])
        out.append(Item(id=item.id, input=item.input, choices=tuple(item.choices[i] for i in keep),
                        gold=(keep.index(right),)))
    return out


def options_tasks() -> list[Task]:
    # One-digit arithmetic: the small default model is well above chance there (about 0.5
    # of 7), so removing options has room to show; on 7-object tracking or deduction it is
    # at chance with any number of options. Two of the seven choices are the words
    # 'banana' and 'house', so some 2-option items are easy by construction.
    levels = ((2, 2), (4, 4), ("all", None))
    return [
        Task(name=f"options:{label}", family="options", axis="options", level=label,
             level_rank=rank, kind="mc", paired_levels=True,
             loader=lambda k=k: restrict_options(arithmetic_items(1), k),
             template=Template(), license=APACHE,
             source=f"{BIGBENCH}: arithmetic/1_digit_{{addition,subtraction,multiplication}}",
             selection_key="options", description=f"the same 1-digit sums with {label} options")
        for rank, (label, k) in enumerate(levels)
    ]


# --- 6. majority vs minority language: multiemo sentiment -----------------------------------
LANGUAGES = ("en", "de", "es", "fr", "it", "ja", "nl", "pl", "pt", "ru", "zh")
# The eleven files are translations of one another line by line up to here; beyond it the
# German and Portuguese files drop sentences. Keeping only aligned rows means every language
# is tested on the same sentences (a paired comparison).
MULTIEMO_ALIGNED = 43_000
MULTIEMO_PREFIX = ("Determine whether given opinion is positive, negative, neutral or ambivalent "
                   "in terms of its sentiment.\n\n")
MULTIEMO_LICENSE = ("Apache-2.0 (BIG-bench); sentences from MultiEmo (Kocon et al. 2021), "
                    "see the BIG-bench multiemo README")


@lru_cache(maxsize=16)
def multiemo_items(lang: str) -> tuple[Item, ...]:
    items = bigbench_mc(_bb("multiemo", f"all_sentence_{lang}"))
    return tuple(it for it in items if int(it.id) < MULTIEMO_ALIGNED)


def multiemo_tasks() -> list[Task]:
    tasks = []
    for lang in LANGUAGES:
        tasks.append(Task(
            name=f"multiemo:{lang}", family="multiemo", axis="language", level=lang,
            level_rank=0 if lang == "en" else 1, kind="mc", mc_score="sum",
            paired_levels=True,
            loader=lambda lang=lang: multiemo_items(lang),
            template=Template(input_format="Opinion: {input}\nSentiment:", prefix=MULTIEMO_PREFIX),
            license=MULTIEMO_LICENSE, source=f"{BIGBENCH}: multiemo/all_sentence_{lang}",
            # " ambivalent" is two tokens, the other labels one: by mean per token the model
            # answers "ambivalent" to nearly everything, so this task decides by the sum.
            description="4-way sentiment; level rank 0 = English (majority), 1 = minority"))
        tasks.append(Task(
            name=f"multiemo_ppl:{lang}", family="multiemo_ppl", axis="language", level=lang,
            level_rank=0 if lang == "en" else 1, kind="rolling", metric="bits_per_byte",
            paired_levels=True,
            loader=lambda lang=lang: [Item(id=it.id, text=it.input) for it in multiemo_items(lang)],
            license=MULTIEMO_LICENSE, source=f"{BIGBENCH}: multiemo/all_sentence_{lang}",
            description="bits per UTF-8 byte of the same sentences (comparable across tokenizers"
                        " and scripts, unlike per-token perplexity)"))
    return tasks


# --- 7. factoid generation vs multiple choice on the same facts (qa_wikidata) -------------
FACT_PATTERN = re.compile(r"^The (?P<relation>.+?) of .+ is$")
FACT_OPTIONS = 4


@lru_cache(maxsize=1)
def wikidata_facts() -> tuple[tuple[Item, ...], tuple[Item, ...]]:
    """The same facts as generation items and as 4-way multiple choice.

    Distractors are answers to other questions of the same relation ("The country of X is"),
    so each option is a plausible kind of answer. Facts whose relation has fewer than four
    distinct answers are dropped from both forms.
    """
    facts = bigbench_generate(_bb("qa_wikidata"))
    by_relation: dict[str, list[Item]] = defaultdict(list)
    for item in facts:
        match = FACT_PATTERN.match(item.input)
        if match:
            by_relation[match.group("relation")].append(item)
    generate, choose = [], []
    for relation, group in by_relation.items():
        answers = sorted({it.targets[0] for it in group})
        if len(answers) < FACT_OPTIONS:
            continue
        for item in group:
            lower = {t.lower() for t in item.targets}
            others = [a for a in answers if a.lower() not in lower]
            if len(others) < FACT_OPTIONS - 1:
                continue
            rng = random.Random(stable_hash("wikidata", item.id))
            picked = rng.sample(others, FACT_OPTIONS - 1)
            position = rng.randrange(FACT_OPTIONS)
            choices = picked[:position] + [item.targets[0]] + picked[position:]
            generate.append(item)
            choose.append(Item(id=item.id, input=item.input, choices=tuple(choices),
                               gold=(position,), targets=item.targets))
    return tuple(generate), tuple(choose)


def wikidata_tasks() -> list[Task]:
    common = dict(family="wikidata", axis="format", shots=2, paired_levels=True, license=(
        "Apache-2.0 (BIG-bench); facts from Wikidata (CC0)"), source=f"{BIGBENCH}: qa_wikidata",
        template=Template(input_format="{input}", answer_format=" {answer}", separator="\n"))
    return [
        Task(name="wikidata:mc", level="mc", level_rank=0, kind="mc",
             loader=lambda: wikidata_facts()[1],
             description="complete 'The country of X is' choosing among 4 answers", **common),
        Task(name="wikidata:generate", level="generate", level_rank=1, kind="generate",
             metric="contains", max_new_tokens=12, loader=lambda: wikidata_facts()[0],
             description="complete 'The country of X is' by greedy generation (lenient match)",
             **common),
    ]


# --- 8. the same three arithmetic axes on generated items (no BIG-bench needed) -----
def synthetic_arithmetic_tasks() -> list[Task]:
    """The three always-available arithmetic families: digits, shots and number of options,
    on the same levels and templates as their BIG-bench namesakes."""
    tasks = [
        Task(name=f"synth_arithmetic:{d}", family="synth_arithmetic", axis="digits", level=d,
             level_rank=d - 1, kind="mc", loader=lambda d=d: synthetic_arithmetic_items(d),
             template=Template(), license=SYNTH_LICENSE, source=SYNTH_SOURCE,
             description=f"{d}-digit +, -, x; 7 choices: 5 numbers, 'banana', 'house' "
                         "(generated)")
        for d in DIGITS
    ]
    tasks += [
        Task(name=f"synth_arithmetic_shots:{k}", family="synth_arithmetic_shots", axis="shots",
             level=k, level_rank=rank, kind="mc", shots=k,
             loader=lambda: synthetic_arithmetic_items(2), template=Template(separator="\n"),
             license=SYNTH_LICENSE, source=SYNTH_SOURCE, selection_key="synth_arithmetic_shots",
             paired_levels=True,
             description=f"2-digit arithmetic with {k} seeded demonstrations (generated)")
        for rank, k in enumerate(SHOTS)
    ]
    levels = ((2, 2), (4, 4), ("all", None))
    tasks += [
        Task(name=f"synth_options:{label}", family="synth_options", axis="options", level=label,
             level_rank=rank, kind="mc", paired_levels=True,
             loader=lambda k=k: restrict_options(synthetic_arithmetic_items(1), k),
             template=Template(), license=SYNTH_LICENSE, source=SYNTH_SOURCE,
             selection_key="synth_options",
             description=f"the same 1-digit sums with {label} options (generated)")
        for rank, (label, k) in enumerate(levels)
    ]
    return tasks


def builtin_tasks() -> list[Task]:
    """The prompted suite (the encoder track's `finetune` levels are in
    `prunelab.tasks.classification`)."""
    from prunelab.tasks.squad import squad_tasks
    from prunelab.tasks.ui_messages import ui_tasks

    bigbench = (arithmetic_tasks() + object_tasks() + squad_tasks() + shots_tasks()
                + options_tasks() + multiemo_tasks() + wikidata_tasks())
    return ([task.with_(needs_bigbench=True) for task in bigbench]
            + synthetic_arithmetic_tasks() + ui_tasks())
