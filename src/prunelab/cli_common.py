"""What the `prunelab` subcommands share (kept out of `prunelab.cli`, which imports them)."""

from __future__ import annotations

from prunelab.errors import PrunelabError

# Where `prune` and `quantize` measure perplexity before and after: text, tokens per window,
# windows.
PRUNE_PPL = ("squad-dev", 512, 32)


def option_pairs(pairs: list[str] | None) -> dict[str, str]:
    """`--option KEY=VALUE` pairs as a mapping (values are converted by each method's config)."""
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise PrunelabError(f"--option {pair!r} is not KEY=VALUE",
                                "write e.g. --option percdamp=0.02")
        options[key.strip()] = value.strip()
    return options
