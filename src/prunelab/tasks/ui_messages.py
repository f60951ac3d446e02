"""A parallel text in many languages that needs no BIG-bench: Django's interface messages.

Django's wheel on PyPI ships gettext catalogues (`<app>/locale/<lang>/LC_MESSAGES/django.po`)
in which the same English messages are translated into about a hundred languages by
volunteers. Kept: the messages of sentence length translated (not fuzzy) into every language
of `LANGUAGES`, in every catalogue of Django itself and its contrib apps. Every language
then holds the same messages (a paired comparison), English being the originals.

The family `ui_ppl` scores them as text (bits per UTF-8 byte), as `multiemo_ppl` scores
MultiEmo's sentences: level rank 0 = English, the majority language of pre-training; 1 = the
others. The wheel (about 8 MB) is downloaded once into the cache by the registry client.
"""

from __future__ import annotations

import zipfile
from functools import lru_cache

from prunelab.data.po import parse_po
from prunelab.tasks.base import Item, Task, stable_hash

DJANGO_REQUIREMENT = "django==5.2.20"
LANGUAGES = ("en", "de", "es", "fr", "it", "ja", "nl", "pl", "pt", "ru", "zh_Hans")
# Shorter messages are mostly names and labels ("Arabic", "Save"), translated alike in many
# languages and scored almost wholly by the first, context-free tokens.
MIN_WORDS = 3
LICENSE = "BSD-3-Clause (Django, its translations by the Django community)"
SOURCE = f"Django's gettext catalogues ({DJANGO_REQUIREMENT} wheel from PyPI)"
_CATALOGUES = ("django.po", "djangojs.po")


def _catalogues(names: list[str]) -> dict[str, dict[str, str]]:
    """catalogue ("django/contrib/admin:django.po") -> language -> member path."""
    found: dict[str, dict[str, str]] = {}
    for name in names:
        parts = name.split("/")
        if parts[-1] not in _CATALOGUES or "locale" not in parts:
            continue
        at = parts.index("locale")
        if len(parts) != at + 4 or parts[at + 2] != "LC_MESSAGES":
            continue
        found.setdefault(f"{'/'.join(parts[:at])}:{parts[-1]}", {})[parts[at + 1]] = name
    return found


def parallel_messages(archive: zipfile.ZipFile, languages: tuple[str, ...] = LANGUAGES,
                      min_words: int = MIN_WORDS) -> dict[str, dict[str, str]]:
    """message id -> language -> text, for messages translated into every language.

    English ("en") is the original (msgid). The id is a stable hash of the catalogue, context
    and English text, so it names the same message at every level. A message whose English
    text appears in several catalogues is kept once, from the first catalogue in sorted order.
    """
    translated = [lang for lang in languages if lang != "en"]
    out: dict[str, dict[str, str]] = {}
    seen: set[str] = set()
    for catalogue, files in sorted(_catalogues(archive.namelist()).items()):
        if not all(lang in files for lang in translated):
            continue
        by_lang = {}
        for lang in translated:
            text = archive.read(files[lang]).decode("utf-8")
            by_lang[lang] = {(m.msgctxt, m.msgid): m.msgstr for m in parse_po(text, files[lang])}
        first = by_lang[translated[0]] if translated else {}
        for key in first:
            english = key[1]
            if english in seen or len(english.split()) < min_words:
                continue
            if not all(key in by_lang[lang] for lang in translated):
                continue
            seen.add(english)
            texts = {lang: by_lang[lang][key] for lang in translated}
            if "en" in languages:
                texts["en"] = english
            message_id = format(stable_hash("ui", catalogue, *key), "016x")
            out[message_id] = {lang: texts[lang] for lang in languages}
    return out


@lru_cache(maxsize=1)
def django_messages() -> dict[str, dict[str, str]]:
    from prunelab.zoo.fetch import download_distribution

    with zipfile.ZipFile(download_distribution(DJANGO_REQUIREMENT)) as archive:
        return parallel_messages(archive)


def ui_items(lang: str) -> list[Item]:
    return [Item(id=message_id, text=texts[lang])
            for message_id, texts in django_messages().items()]


def ui_tasks() -> list[Task]:
    return [
        Task(name=f"ui_ppl:{lang}", family="ui_ppl", axis="language", level=lang,
             level_rank=0 if lang == "en" else 1, kind="rolling", metric="bits_per_byte",
             paired_levels=True, loader=lambda lang=lang: ui_items(lang), license=LICENSE,
             source=f"{SOURCE}, locale {lang}" if lang != "en" else f"{SOURCE}, English msgids",
             description="bits per UTF-8 byte of the same interface messages (comparable across"
                         " tokenizers and scripts); level rank 0 = English, 1 = the others")
        for lang in LANGUAGES
    ]
