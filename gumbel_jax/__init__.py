"""gumbel_jax: Gumbel Reranking (Huang et al., ACL 2025) in JAX and Flax."""

__version__ = "0.1.0"
