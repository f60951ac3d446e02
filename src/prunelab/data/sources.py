"""The text sources: named corpora, sources provided by a name prefix, and local files.

What a source name means and whether it can be read, without tokenizing anything (no torch
here, so argument checks can run before the model stack is imported). Cutting the text into
token windows is `prunelab.data.corpora`'s.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prunelab.errors import PrunelabError

@dataclass(frozen=True)
class TextSource:
    """A named corpus: what it is, under which licence, and how its text is read."""

    description: str
    license: str
    read: Callable[[], str] = field(repr=False)
    needs_bigbench: bool = False


def python_reference_text(half: int) -> str:
    """One of two disjoint halves of Python's own reference text (`pydoc_data.topics`, which
    ships with every CPython): the topics in sorted order, alternately.

    Topics repeat one another (the compound statements' topic holds the "if" topic's text),
    so each paragraph is kept once, in the first topic that has it: no paragraph is in both
    halves. Needs no download. The text is the running interpreter's, so it differs a little
    between Python versions; results record the digest of the tokens drawn from it."""
    from pydoc_data.topics import topics

    seen: set[str] = set()
    kept: list[str] = []
    for index, name in enumerate(sorted(topics)):
        for paragraph in topics[name].split("\n\n"):
            paragraph = paragraph.strip("\n")
            if not paragraph.strip() or paragraph in seen:
                continue
            seen.add(paragraph)
            if index % 2 == half:
                kept.append(paragraph)
    return "\n\n".join(kept)


def _squad_paragraphs(filename: str) -> Callable[[], str]:
    def read() -> str:
        from prunelab.data.bigbench import task_dir

        data = json.loads((task_dir("squad_shifts") / filename).read_text(encoding="utf-8"))
        return "\n\n".join(p["context"].strip() for article in data["data"]
                            for p in article["paragraphs"])
    return read


PYTHON_REF_LICENSE = "PSF License (Python documentation, pydoc_data.topics of the running CPython)"
_SQUAD = "CC BY-SA 4.0; from BIG-bench squad_shifts (needs BIG-bench)"
TEXT_SOURCES: dict[str, TextSource] = {
    "python-ref-a": TextSource(
        "Python's reference text, topics 1, 3, 5, ... in sorted order (calibration default; "
        "ships with Python, no download)", PYTHON_REF_LICENSE, lambda: python_reference_text(0)),
    "python-ref-b": TextSource(
        "Python's reference text, topics 2, 4, 6, ... (perplexity default; disjoint from "
        "python-ref-a)", PYTHON_REF_LICENSE, lambda: python_reference_text(1)),
    "squad-dev": TextSource("Wikipedia paragraphs of the SQuAD v1.1 dev set", _SQUAD,
                            _squad_paragraphs("squaddev_v1.1.json"), needs_bigbench=True),
    "squadshifts-new_wiki": TextSource("newer Wikipedia paragraphs from SQuADShifts", _SQUAD,
                                       _squad_paragraphs("new_wiki_v1.0.json"),
                                       needs_bigbench=True),
    "squadshifts-nyt": TextSource("New York Times paragraphs (SQuADShifts)", _SQUAD,
                                  _squad_paragraphs("nyt_v1.0.json"), needs_bigbench=True),
    "squadshifts-reddit": TextSource("Reddit posts (SQuADShifts)", _SQUAD,
                                     _squad_paragraphs("reddit_v1.0.json"), needs_bigbench=True),
    "squadshifts-amazon": TextSource("Amazon product reviews (SQuADShifts)", _SQUAD,
                                     _squad_paragraphs("amazon_reviews_v1.0.json"),
                                     needs_bigbench=True),
}
# Calibration sources that other parts provide by a name prefix: name -> its text, and name ->
# a check that refuses it in one line before any text is built. "task:" is a task's own prompts
# (`prunelab.tasks.calibration`, which registers itself when imported; `prunelab.compress`
# imports it, so every pruning run knows the prefix).
TEXT_PROVIDERS: dict[str, Callable[[str], str]] = {}
TEXT_PROVIDER_CHECKS: dict[str, Callable[[str], object]] = {}


def load_text(source: str | Path) -> str:
    """The whole text of a named corpus or a local file; paragraphs joined by blank lines."""
    name = str(source)
    for prefix, provide in TEXT_PROVIDERS.items():
        if name.startswith(prefix):
            return provide(name)
    if name in TEXT_SOURCES:
        return TEXT_SOURCES[name].read()
    path = Path(name).expanduser()
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise PrunelabError(f"{path} is not UTF-8 text", "pass a plain UTF-8 text file") from None
    raise PrunelabError(
        f"unknown text source {name!r}",
        f"use one of {', '.join(TEXT_SOURCES)} or the path of a local text file",
    )


def check_text_source(source: str, role: str) -> None:
    """A named corpus, or a local file that holds UTF-8 text (read through once, in pieces).

    `role` ("calibration", "text") names the source in the messages; only calibration may
    name a provided source (TEXT_PROVIDERS, e.g. "task:NAME").
    """
    if source in TEXT_SOURCES:
        if TEXT_SOURCES[source].needs_bigbench:
            from prunelab.data.bigbench import require

            require(f"the {role} source {source}")
        return
    if role == "calibration":
        for prefix, check in TEXT_PROVIDER_CHECKS.items():
            if source.startswith(prefix):
                check(source)  # e.g. enough task items left after the evaluation's
                return
    path = Path(source).expanduser()
    names = ", ".join(TEXT_SOURCES)
    if not path.exists():
        if path.suffix or os.sep in source or (os.altsep and os.altsep in source):
            raise PrunelabError(f"{role} file {source} does not exist",
                                f"check the path, or name a corpus: {names}")
        raise PrunelabError(f"unknown text source {source!r}",
                            f"use one of {names} or the path of a local text file")
    if not path.is_file():
        raise PrunelabError(f"{role} source {source} is not a file",
                            "pass a UTF-8 text file or a corpus name")
    decoder = codecs.getincrementaldecoder("utf-8")()
    has_text = False
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                has_text = bool(decoder.decode(chunk).strip()) or has_text
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise PrunelabError(f"{path} is not UTF-8 text", "pass a plain UTF-8 text file") from None
    except OSError as exc:
        raise PrunelabError(f"cannot read {path}: {exc.strerror}",
                            "check that the file is readable") from None
    if not has_text:
        raise PrunelabError(f"{role} file {path} is empty", "pass a file with some text in it")
