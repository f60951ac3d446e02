"""A small reader for gettext catalogues (.po files): the translated messages, nothing else.

Only what a parallel text needs: each message's context, English original and translation.
Plural messages, fuzzy (unreviewed) translations, obsolete entries (`#~`) and the header are
left out, as are messages not translated at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunelab.errors import PrunelabError

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "a": "\a", "b": "\b",
            "f": "\f", "v": "\v"}


@dataclass(frozen=True)
class PoMessage:
    msgid: str
    msgstr: str
    msgctxt: str = ""


def _unquote(literal: str, where: str) -> str:
    """The value of one C-style quoted string, `"..."`."""
    literal = literal.strip()
    if len(literal) < 2 or literal[0] != '"' or literal[-1] != '"':
        raise PrunelabError(f"{where}: expected a quoted string, got {literal[:40]!r}",
                            "check the .po file")
    out, body, i = [], literal[1:-1], 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body):
            out.append(_ESCAPES.get(body[i + 1], body[i + 1]))
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)


def parse_po(text: str, name: str = "catalogue") -> list[PoMessage]:
    """The translated, non-fuzzy, singular messages of a .po file's text, in file order."""
    messages: list[PoMessage] = []
    entry: dict[str, str] = {}
    fuzzy = False
    field = None

    def finish() -> None:
        nonlocal entry, fuzzy, field
        if ("msgid" in entry and "msgid_plural" not in entry and not fuzzy
                and entry["msgid"] and entry.get("msgstr")):
            messages.append(PoMessage(entry["msgid"], entry["msgstr"], entry.get("msgctxt", "")))
        entry, fuzzy, field = {}, False, None

    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        where = f"{name}:{number}"
        if not line:
            finish()
        elif line.startswith("#"):
            if field is not None and field != "comment":
                finish()  # a comment starts the next entry
            field = "comment"
            fuzzy = fuzzy or (line.startswith("#,") and "fuzzy" in line)
        elif line.startswith('"'):
            if field in (None, "comment"):
                raise PrunelabError(f"{where}: a string continues no msgid or msgstr",
                                    "check the .po file")
            entry[field] += _unquote(line, where)
        else:
            keyword, _, rest = line.partition(" ")
            if keyword == "msgctxt" or (keyword == "msgid" and "msgid" in entry):
                if "msgid" in entry:
                    finish()
            if keyword not in ("msgctxt", "msgid", "msgid_plural", "msgstr") \
                    and not keyword.startswith("msgstr["):
                raise PrunelabError(f"{where}: unknown keyword {keyword!r}", "check the .po file")
            field = keyword
            entry[field] = _unquote(rest, where)
    finish()
    return messages
