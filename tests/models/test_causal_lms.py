"""Hugging Face causal LMs out of the box: a pruner on a stock GPT-2, OPT or Llama prunes the decoder blocks'
Linear / Conv1D layers and keeps the embeddings and the (tied or untied) LM head dense, with one info line;
include= naming the head still prunes it (or, tied, is refused naming the shared tensor)."""

from __future__ import annotations

import logging
import math
import re

import pytest
import torch
from torch import nn

import fls_kernels as fls

transformers = pytest.importorskip("transformers")


def _gpt2():
    config = transformers.GPT2Config(
        vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config)  # lm_head tied to wte


def _opt():
    config = transformers.OPTConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, ffn_dim=32, num_attention_heads=2,
        max_position_embeddings=16, word_embed_proj_dim=16,
    )  # fmt: skip
    return transformers.OPTForCausalLM(config)  # lm_head tied to embed_tokens


def _llama(tied=False):
    config = transformers.LlamaConfig(
        vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=16, tie_word_embeddings=tied,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


MODELS = {"gpt2": _gpt2, "opt": _opt, "llama": _llama, "llama_tied": lambda: _llama(tied=True)}
#: block layers per block: GPT-2 c_attn, attn c_proj, c_fc, mlp c_proj; OPT q, k, v, out_proj, fc1, fc2; Llama q, k,
#: v, o, gate, up, down
PER_BLOCK = {"gpt2": 4, "opt": 6, "llama": 7, "llama_tied": 7}
INFO = "keeps the model's embeddings and output head dense"


def _tokens(seed=0, batches=2):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 40, (4, 8), generator=g)} for _ in range(batches)]


def _block_layers(model: nn.Module) -> set[str]:
    """The Linear / GPT-2 Conv1D modules inside the numbered decoder blocks, from the module tree itself."""
    return {
        name
        for name, module in model.named_modules()
        if (isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D") and re.search(r"\.\d+\.", name)
    }


@pytest.mark.parametrize("name", list(MODELS))
def test_a_stock_causal_lm_prunes_its_blocks_and_keeps_embeddings_and_head_dense(name, caplog):
    torch.manual_seed(0)
    model = MODELS[name]()
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == (name != "llama")
    dense_before = {k: v.clone() for k, v in model.state_dict().items() if "embed" in k or "wte" in k or "wpe" in k}
    head_before = model.get_output_embeddings().weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="fls_kernels"):
        pruner = fls.FishLegPruner(model, init="kfac", refine_steps=0, init_batches=2)
    assert set(pruner.layer_names) == _block_layers(model)
    assert len(pruner.layer_names) == 2 * PER_BLOCK[name]
    ours = [r for r in caplog.records if r.name.startswith("fls_kernels")]
    assert [r.getMessage() for r in ours if r.levelno >= logging.WARNING] == []
    (info,) = [r.getMessage() for r in ours if INFO in r.getMessage()]
    defaults = [u for u in pruner.unpruned if u.by_default]
    assert defaults and all(u.explicit for u in pruner.unpruned)  # nothing reported as unsupported
    assert all(u.name in info for u in defaults) and any("embed" in u.name or "wte" in u.name for u in defaults)
    # an untied head is its own tensor, listed as the output head; a tied one is the embedding's, listed once
    assert any(("lm_head.weight" == u.name) != tied and "output head" in u.reason for u in defaults)
    assert "output head" in info
    pruner.fit(_tokens(), steps=0)
    pruner.prune(0.5, substeps=2)
    zeros = sum(int((v.weight == 0).sum()) for v in pruner.views)
    assert zeros == math.ceil(0.5 * pruner.num_prunable())
    pruner.finalize()
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in dense_before.items())
    assert torch.equal(model.get_output_embeddings().weight, head_before)
    with torch.no_grad():
        assert torch.isfinite(model(**_tokens(seed=5, batches=1)[0]).logits).all()


def test_include_naming_an_untied_head_prunes_it():
    model = _llama()
    pruner = fls.MagnitudePruner(model, include=r"lm_head|model\.layers\..*")
    assert "lm_head" in pruner.layer_names and not any(u.name == "lm_head.weight" for u in pruner.unpruned)
    pruner.prune(0.5)
    assert int((model.lm_head.weight == 0).sum()) > 0


def test_include_naming_a_tied_head_is_refused_naming_the_shared_tensor():
    model = _gpt2()
    with pytest.raises(ValueError, match=r"'lm_head.weight' is the same tensor as 'transformer.wte.weight'"):
        fls.MagnitudePruner(model, include=r"lm_head|transformer\.h\..*")
    assert not model.lm_head.weight._backward_hooks


def test_other_models_keep_their_embedding_warning(caplog):
    """Only a transformers-style model (get_input_embeddings) keeps its embeddings dense by default; an
    nn.Embedding elsewhere is still reported as a weight of a type that cannot be pruned."""

    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc = nn.Embedding(10, 6), nn.Linear(6, 3)

        def forward(self, x):
            return self.fc(self.emb(x).mean(1))

    with caplog.at_level(logging.WARNING, logger="fls_kernels.pruning"):
        pruner = fls.MagnitudePruner(Bag())
    assert "emb.weight" in caplog.text and not any(u.by_default for u in pruner.unpruned)


def test_a_model_whose_only_layer_is_its_head_names_the_default_when_refusing():
    class HeadOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.head = nn.Embedding(10, 4), nn.Linear(4, 10)

        def get_input_embeddings(self):
            return self.embed

        def get_output_embeddings(self):
            return self.head

        def forward(self, x):
            return self.head(self.embed(x))

    with pytest.raises(ValueError, match=r"no prunable layers .*the output head 'head' dense by default"):
        fls.MagnitudePruner(HeadOnly())
    assert fls.MagnitudePruner(HeadOnly(), include="head").layer_names == ["head"]
