"""Ready-made models for pruning studies: sentence encoders with a pooled-embedding output."""

from fls_kernels.models.minilm import (
    ENCODER_LAYERS,
    SentenceEncoder,
    load_minilm,
    minilm_path,
    tokenize,
)

__all__ = ["ENCODER_LAYERS", "SentenceEncoder", "load_minilm", "minilm_path", "tokenize"]
