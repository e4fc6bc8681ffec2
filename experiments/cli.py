"""Shared command-line handling: load a config file, apply --set overrides, report errors
without a traceback."""

from __future__ import annotations

import importlib.util
import pathlib
import sys


def load_config(path: str, overrides: list[str]):
    from gumbel_jax.training.config import apply_overrides

    file = pathlib.Path(path)
    if not file.is_file():
        raise ValueError(f"{path}: no such config file")
    spec = importlib.util.spec_from_file_location(f"gumbel_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path}: a config file must define get_config()")
    return apply_overrides(module.get_config(), overrides)


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2
