"""Training configuration: dataclasses, dotted command-line overrides, validation."""

from __future__ import annotations

import ast
import dataclasses
import typing

OBJECTIVES = ("g_rerank", "emdr", "pdist", "loop", "adist", "supervised")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    name: str = "g_rerank"
    k: int = 5  # top-k (the paper's metrics are @5)
    tau: float = 0.5  # relaxed top-k temperature (third-party report of the paper's value)
    kappa: float = 1.0  # score scale
    num_samples: int = 1  # Gumbel draws per question, sharing one encoder pass
    relaxation: str = "l2x"  # l2x | subset | no_noise | straight_through (ablations)
    theta: float = 0.01  # reranker softmax temperature of the baselines (Atlas default)
    temperature: float = 0.01  # baselines' target temperature (Atlas's T_gold)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 0.0
    clip_norm: float = 1.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    num_steps: int = 1000
    checkpoint_every: int = 100
    max_to_keep: int = 3
    objective: ObjectiveConfig = dataclasses.field(default_factory=ObjectiveConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)


def _leaf_keys(config, prefix="") -> dict[str, type]:
    keys = {}
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            keys.update(_leaf_keys(value, f"{prefix}{field.name}."))
        else:
            keys[f"{prefix}{field.name}"] = hints[field.name]
    return keys


def _parse(text: str, kind: type, key: str):
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{key}={text!r}: expected {kind.__name__}")
    return value


def apply_overrides(config, assignments: list[str]):
    """``["objective.tau=0.3", "seed=2"]`` -> a new config; unknown keys are an error that
    lists the valid ones."""
    valid = _leaf_keys(config)
    for assignment in assignments:
        if "=" not in assignment:
            raise ValueError(f"override {assignment!r} is not of the form key=value")
        key, text = assignment.split("=", 1)
        if key not in valid:
            raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join(valid)}")
        value = _parse(text, valid[key], key)
        *path, leaf = key.split(".")
        config = _replace_path(config, path, leaf, value)
    return config


def _replace_path(config, path, leaf, value):
    if not path:
        return dataclasses.replace(config, **{leaf: value})
    child = getattr(config, path[0])
    return dataclasses.replace(config, **{path[0]: _replace_path(child, path[1:], leaf, value)})


def validate(config: TrainConfig, *, num_candidates: int) -> None:
    """Settings that cannot work, with a message that says which and why."""
    objective = config.objective
    if objective.name not in OBJECTIVES:
        raise ValueError(f"objective.name={objective.name!r}; expected one of {OBJECTIVES}")
    if not 1 <= objective.k <= num_candidates:
        raise ValueError(f"objective.k={objective.k} must be in [1, {num_candidates}] (the "
                         "number of candidates)")
    for name in ("tau", "kappa", "theta", "temperature"):
        if getattr(objective, name) <= 0:
            raise ValueError(f"objective.{name} must be > 0")
    if objective.num_samples < 1:
        raise ValueError("objective.num_samples must be >= 1")
    if config.checkpoint_every < 1 or config.num_steps < 0:
        raise ValueError("checkpoint_every must be >= 1 and num_steps >= 0")
    warmup = config.optimizer.warmup_steps
    if warmup < 0 or (warmup and warmup >= max(config.num_steps, 2)):
        raise ValueError(f"optimizer.warmup_steps={warmup} must be in [0, num_steps="
                         f"{config.num_steps}) (the cosine decay follows the warm-up)")
