"""G-Rerank on the synthetic multi-hop world with small random models (smoke / CPU scale).

    python -m experiments.train --config experiments/configs/synthetic_g_rerank.py \
        --workdir runs/synthetic_g_rerank --set train.objective.name=emdr

Expect: a finished run in a minute on 2 CPU cores; with a random (untrained) reader the
numbers are not meaningful - the demo (issue 6) trains the reader first.
"""

from gumbel_jax.training.config import (
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimizerConfig,
    TrainConfig,
)


def get_config() -> ExperimentConfig:
    return ExperimentConfig(
        name="synthetic_g_rerank",
        data=DataConfig(source="synthetic", num_train=256, num_eval=64, batch_size=16),
        model=ModelConfig(reader="tiny", reranker="tiny", score_token_id=3),
        train=TrainConfig(num_steps=100, checkpoint_every=50,
                          objective=ObjectiveConfig(name="g_rerank", k=5, tau=0.5, kappa=1.0),
                          optimizer=OptimizerConfig(learning_rate=1e-3)),
    )
