"""Prompt templates of the LLM steps: `src/lfp/llm/prompts/<name>.txt`, a system text and a user
template split at a `---` line. One loader, so contrastive and explain read them the same way."""

from __future__ import annotations

import functools
from importlib import resources

from lfp.core.errors import ConfigError


@functools.lru_cache(maxsize=None)
def load_prompt(name: str) -> tuple[str, str]:
    """(system, user template) of prompt `name`; a file without its `---` line is refused."""
    text = resources.files("lfp.llm").joinpath("prompts", f"{name}.txt").read_text(encoding="utf-8")
    system, sep, user = text.partition("\n---\n")
    if not sep:
        raise ConfigError(f"src/lfp/llm/prompts/{name}.txt: missing the '---' line between system and user text")
    return system.strip(), user.strip()
