"""Training: configuration, pure steps, and the checkpointed loop."""

from gumbel_jax.training.config import (
    ObjectiveConfig,
    OptimizerConfig,
    TrainConfig,
    apply_overrides,
    validate,
)
from gumbel_jax.training.loop import NonFiniteLossError, train
from gumbel_jax.training.step import make_train_step, objective_loss

__all__ = [
    "NonFiniteLossError",
    "ObjectiveConfig",
    "OptimizerConfig",
    "TrainConfig",
    "apply_overrides",
    "make_train_step",
    "objective_loss",
    "train",
    "validate",
]
