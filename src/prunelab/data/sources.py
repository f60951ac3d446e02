"""The named text sources and the calibration config: plain data, no torch.

Kept apart from `prunelab.data.corpora` (which cuts texts into token tensors) so that the
command line can check a source name or a calibration setting before the heavy stack loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from prunelab import defaults

# name -> (BIG-bench task folder, file, description)
TEXT_SOURCES: dict[str, tuple[str, str, str]] = {
    "squad-dev": ("squad_shifts", "squaddev_v1.1.json",
                  "Wikipedia paragraphs of the SQuAD v1.1 dev set (perplexity default)"),
    "squadshifts-new_wiki": ("squad_shifts", "new_wiki_v1.0.json",
                             "newer Wikipedia paragraphs from SQuADShifts (calibration default)"),
    "squadshifts-nyt": ("squad_shifts", "nyt_v1.0.json", "New York Times paragraphs (SQuADShifts)"),
    "squadshifts-reddit": ("squad_shifts", "reddit_v1.0.json", "Reddit posts (SQuADShifts)"),
    "squadshifts-amazon": ("squad_shifts", "amazon_reviews_v1.0.json",
                           "Amazon product reviews (SQuADShifts)"),
}
# Text sources that other parts provide by a name prefix (name -> text): "task:" is a task's
# own prompts (`prunelab.tasks.calibration`, which registers itself when imported).
TEXT_PROVIDERS: dict[str, Callable[[str], str]] = {}
DEFAULT_EVAL_SOURCE = defaults.EVAL_SOURCE
DEFAULT_CALIBRATION_SOURCE = defaults.CALIBRATION_SOURCE


@dataclass(frozen=True)
class CalibrationConfig:
    """Which text calibrates a method, and how much of it.

    `n_samples` windows of `seqlen` tokens, drawn at seeded random offsets from the token
    stream of `source` (a name from TEXT_SOURCES or a local text file).
    """

    source: str = defaults.CALIBRATION_SOURCE
    n_samples: int = defaults.CALIBRATION_SAMPLES
    seqlen: int = defaults.CALIBRATION_SEQLEN
    seed: int = defaults.CALIBRATION_SEED

    def to_dict(self) -> dict:
        return asdict(self)
