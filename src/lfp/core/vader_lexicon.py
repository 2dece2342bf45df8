"""The VADER lexicon (vaderSentiment's vader_lexicon.txt): word -> mean human valence in [-4, 4].

In the core, not in the lexicon_rl kind, because loading params checks planted words against it
(a typo fails at load, not minutes into `measure`) and the core never imports a task kind.
"""

from __future__ import annotations

import functools
from pathlib import Path

from lfp.core.errors import DataError


def lexicon_path() -> Path:
    import vaderSentiment

    return Path(vaderSentiment.__file__).with_name("vader_lexicon.txt")


@functools.lru_cache(maxsize=1)
def lexicon() -> dict[str, float]:
    """word -> mean human valence in [-4, 4], from vaderSentiment's vader_lexicon.txt."""
    path = lexicon_path()
    out: dict[str, float] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) < 2 or not parts[0]:
                continue
            try:
                out[parts[0]] = float(parts[1])
            except ValueError:
                raise DataError(f"{path}:{lineno}: valence '{parts[1]}' is not a number") from None
    if not out:
        raise DataError(f"{path}: empty VADER lexicon")
    return out
