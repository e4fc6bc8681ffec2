"""Training: configuration, the model factory, pure steps, the step loop with hooks and the
checkpointed shell around it."""

from gumbel_jax.training.config import (
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimizerConfig,
    TrainConfig,
    apply_overrides,
    validate,
)
from gumbel_jax.training.factory import build_models
from gumbel_jax.training.hooks import Hook, held_out_eval_hook
from gumbel_jax.training.loop import NonFiniteLossError, run_steps, train
from gumbel_jax.training.step import OBJECTIVE_LOSSES, make_train_step, objective_loss

__all__ = [
    "OBJECTIVE_LOSSES",
    "DataConfig",
    "ExperimentConfig",
    "Hook",
    "ModelConfig",
    "NonFiniteLossError",
    "ObjectiveConfig",
    "OptimizerConfig",
    "TrainConfig",
    "apply_overrides",
    "build_models",
    "held_out_eval_hook",
    "make_train_step",
    "objective_loss",
    "run_steps",
    "train",
    "validate",
]
