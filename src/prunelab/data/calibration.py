"""Which text calibrates a method, how much of it, and the checks it passes before any use.

The one calibration config of prunelab: the Python API, the CLI and the study's stages all
build a `CalibrationConfig` through `calibration_config`, so one set of rules refuses a bad
source or size everywhere. No torch here; drawing the windows is `prunelab.data.corpora`'s.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from prunelab import defaults
from prunelab.data.checks import check_seqlen
from prunelab.data.sources import check_text_source
from prunelab.errors import PrunelabError


@dataclass(frozen=True)
class CalibrationConfig:
    """Which text calibrates a method, and how much of it.

    `n_samples` windows of `seqlen` tokens, drawn at seeded random offsets from the token
    stream of `source` (a name from TEXT_SOURCES, "task:NAME", or a local text file).
    """

    source: str = defaults.CALIBRATION_SOURCE
    n_samples: int = defaults.CALIBRATION_SAMPLES
    seqlen: int = defaults.CALIBRATION_SEQLEN
    seed: int = defaults.CALIBRATION_SEED

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> CalibrationConfig:
        """Refuse a config that cannot calibrate (one line with the fix); return it unchanged.

        The source must be known or a readable, non-empty UTF-8 file (read through once).
        """
        if isinstance(self.n_samples, bool) or not isinstance(self.n_samples, int) \
                or self.n_samples < 1:
            raise PrunelabError("calibration needs at least one sample",
                                "use --calib-samples 1 or more")
        check_seqlen(self.seqlen)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise PrunelabError(f"calibration seed {self.seed!r} is not a non-negative integer",
                                "use e.g. --seed 0")
        check_text_source(str(self.source), "calibration")
        return self


def calibration_config(calibration: CalibrationConfig | str | Path | dict | None = None,
                       seed: int | None = None) -> CalibrationConfig:
    """A checked CalibrationConfig from what a caller holds: a config, a source name or file
    path (default sizes), a mapping of its fields (a study's resolved calibration section),
    or None (every default). `seed`, when given, replaces the config's seed.
    """
    if calibration is None:
        calibration = CalibrationConfig()
    elif isinstance(calibration, (str, Path)):
        calibration = CalibrationConfig(source=str(calibration))
    elif isinstance(calibration, dict):
        fields = CalibrationConfig.__dataclass_fields__
        calibration = CalibrationConfig(**{k: v for k, v in calibration.items() if k in fields})
    if not isinstance(calibration, CalibrationConfig):
        raise PrunelabError(f"{calibration!r} is not a calibration source",
                            "pass a CalibrationConfig, a text source name or a file path")
    if seed is not None:
        calibration = replace(calibration, seed=seed)
    return calibration.check()
