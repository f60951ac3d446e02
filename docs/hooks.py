"""mkdocs hooks: add the reference pages generated from the code (`gen_reference.py`).

The pages exist only in the built site, never in the repository, so they cannot go stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.structure.files import File

sys.path.insert(0, str(Path(__file__).parent))

import gen_reference  # noqa: E402  (beside this file, which mkdocs loads by path)


def on_files(files, config):
    for path, content in gen_reference.pages().items():
        files.append(File.generated(config, path, content=content))
    return files
