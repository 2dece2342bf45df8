"""Prepared-data access: the contract between `prepare` and every stage that reads its JSONL.

Why a core module: stages must never import each other; every stage reads prepared rows through
these functions, so a file name or the seeded selection changes in one place.
"""

from __future__ import annotations

import hashlib
from typing import Any

from lfp.core.paths import prepared_file

__all__ = ["prepared_file", "seeded_rank", "subsample", "split_heldout"]


def seeded_rank(seed: int, salt: str, key: str) -> int:
    """A stable pseudo-random rank for `key`: the same (seed, salt, key) always gives the same int."""
    digest = hashlib.blake2b(f"{seed}:{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")



def subsample(rows: list[dict[str, Any]], limit: int, seed: int, salt: str) -> list[dict[str, Any]]:
    """Keep `limit` rows (0 = all) chosen by seeded hash of their id, in their original order."""
    if limit <= 0 or len(rows) <= limit:
        return rows
    keep = set(sorted(range(len(rows)), key=lambda i: seeded_rank(seed, salt, rows[i]["id"]))[:limit])
    return [row for i, row in enumerate(rows) if i in keep]



def split_heldout(rows: list[dict[str, Any]], fraction: float, seed: int, salt: str) -> tuple[list, list]:
    """(finetune, heldout): the round(fraction * n) ids with the smallest seeded hash are held out.

    Both sides keep at least one row when n >= 2, so neither DPO nor the probe gets an empty file.
    """
    n = len(rows)
    n_held = min(max(round(fraction * n), 1), n - 1) if n >= 2 else n
    order = sorted(range(n), key=lambda i: seeded_rank(seed, salt, rows[i]["id"]))
    held = set(order[:n_held])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]
