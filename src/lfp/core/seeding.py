"""Seeding python, numpy and torch, torch lazily through an import hook.

Why: the same params must give the same metrics on CPU, and a stage that never imports torch
must not pay for importing it just to seed it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import random
import sys
import types
from typing import Any


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so the same params give the same metrics on CPU.

    torch is seeded the moment it is imported (now, if it already is): a stage that never touches
    a model (prepare, contrastive, report) does not pay ~1-1.5 s for importing torch, and a stage
    that does gets the same seeded state as before, since nothing runs between torch's import and
    its seeding either way."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    if "torch" in sys.modules:
        _seed_torch(sys.modules["torch"], seed)
    else:
        _TorchSeeder.install(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def _seed_torch(torch: Any, seed: int) -> None:
    torch.manual_seed(seed)
    # = torch.use_deterministic_algorithms(True, warn_only=True) without its import of
    # torch._inductor (~1 s in every stage process, the pipeline profile showed): lfp compiles
    # nothing, so the inductor flag that call also sets has no effect here
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:  # pragma: no cover - a torch without the private setter
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        setter(True, warn_only=True)


class _TorchSeeder(importlib.abc.MetaPathFinder):
    """Import hook: seeds torch right after its first import finishes executing, then leaves.

    It stays through mere look-ups (`importlib.util.find_spec("torch")`, which transformers uses to
    ask whether torch is installed) and goes away once torch's module has run."""

    seed: int | None = None

    @classmethod
    def install(cls, seed: int) -> None:
        cls.seed = seed  # a later seed_everything before the import wins, as it would have
        if not any(isinstance(f, cls) for f in sys.meta_path):
            sys.meta_path.insert(0, cls())

    @classmethod
    def uninstall(cls) -> None:
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, cls)]

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "torch":
            return None
        for finder in sys.meta_path:  # the spec the import system would have found without us
            find = None if isinstance(finder, _TorchSeeder) else getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):  # pragma: no cover - not a plain package
            return spec
        exec_module = loader.exec_module

        def exec_then_seed(module: types.ModuleType) -> None:
            _TorchSeeder.uninstall()
            del loader.exec_module  # back to the loader's own method
            exec_module(module)
            if _TorchSeeder.seed is not None:
                _seed_torch(module, _TorchSeeder.seed)

        loader.exec_module = exec_then_seed  # a fresh loader per look-up: only this spec's import seeds
        return spec
