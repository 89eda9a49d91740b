"""``python -m fls_kernels prune``: tiny random GPT-2, OPT and Llama folders (with a tokenizer trained here) pruned
from calibration text, saved with save_pretrained and reloaded with the exact zeros; perplexity and the JSON
report; each bad input one line naming the argument, exit status 2, nothing written."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from torch import nn

from benchmarks.quality import gpt
from fls_kernels import llm
from fls_kernels.__main__ import main

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")


CONFIGS = {
    "gpt2": lambda: transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=96, n_positions=32, n_embd=16, n_layer=2, n_head=2, bos_token_id=0,
                                eos_token_id=0)
    ),
    "opt": lambda: transformers.OPTForCausalLM(
        transformers.OPTConfig(vocab_size=96, hidden_size=16, num_hidden_layers=2, ffn_dim=32, num_attention_heads=2,
                               max_position_embeddings=32, word_embed_proj_dim=16, bos_token_id=0, eos_token_id=0,
                               pad_token_id=0)
    ),
    "llama": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                                 bos_token_id=0, eos_token_id=0)
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    text = gpt.text()
    root = tmp_path_factory.mktemp("text")
    (root / "calib.txt").write_text(text[:30000])
    (root / "eval.txt").write_text(text[30000:45000])
    (root / "short.txt").write_text("too little text here")
    return root, gpt.bpe_tokenizer(text[:20000], 96)


def _folder(root, name: str, tokenizer):
    torch.manual_seed(0)
    path = root / name
    CONFIGS[name]().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _block_matrices(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, module in model.named_modules():
        if re.search(r"\.\d+\.", name) and (isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"):
            out[name] = module.weight.detach()
    return out


@pytest.mark.parametrize(
    ("name", "method", "sequential"),
    [("gpt2", "fls", None), ("opt", "sparsegpt", None), ("llama", "fls", None), ("opt", "fls", "blocks"),
     ("llama", "sparsegpt", "blocks")],
)  # fmt: skip
def test_the_command_prunes_saves_and_reports(tmp_path, texts, name, method, sequential, capsys):
    root, tokenizer = texts
    folder = _folder(tmp_path, name, tokenizer)
    out = tmp_path / "out"
    args = ["prune", str(folder), "--method", method, "--sparsity", "0.5", "--calib", str(root / "calib.txt")]
    args += ["--samples", "6", "--seq-len", "16", "--eval", str(root / "eval.txt"), "--eval-windows", "5"]
    args += ["--sequential", sequential, "--aux-steps", "2"] if sequential else []
    assert main([*args, "--batch-size", "4", "--out", str(out)]) == 0
    report = json.loads((out / "fls_report.json").read_text())
    assert report["method"] == method and report["samples"] == 6 and report["seq_len"] == 16
    assert report["sequential"] == sequential and report["aux_steps"] == (2 if sequential else 0)
    assert report["eval_windows"] == 5 and report["layers"] == len(_block_matrices(CONFIGS[name]()))
    assert math.isfinite(report["perplexity_before"]) and math.isfinite(report["perplexity_after"])
    assert report["perplexity_before"] != report["perplexity_after"]
    assert set(report["versions"]) == {"fls_kernels", "torch", "transformers"}
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    for layer, W in _block_matrices(reloaded).items():  # uniform allocation: ⌈s·d⌉ zeros in every layer
        assert int((W == 0).sum()) == math.ceil(0.5 * W.numel()), layer
    assert report["sparsity_reached"] == pytest.approx(0.5, abs=1e-3)
    dense = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    assert torch.equal(reloaded.get_input_embeddings().weight, dense.get_input_embeddings().weight)
    assert transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)("a b")["input_ids"]
    assert "perplexity before" in capsys.readouterr().out


def test_two_four_prunes_every_group_of_four(tmp_path, texts):
    root, tokenizer = texts
    folder = _folder(tmp_path, "llama", tokenizer)
    args = ["prune", str(folder), "--method", "magnitude", "--sparsity", "0.5", "--pattern", "2:4"]
    assert main([*args, "--calib", str(root / "calib.txt"), "--samples", "2", "--seq-len", "8", "--out",
                 str(tmp_path / "o")]) == 0  # fmt: skip
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "o", local_files_only=True)
    for layer, W in _block_matrices(reloaded).items():
        groups = (W.reshape(W.shape[0], -1, 4) == 0).sum(-1)
        assert bool((groups == 2).all()), layer


def _bad(tmp_path, texts, **change):
    root, tokenizer = texts
    folder = change.pop("folder", None) or _folder(tmp_path, "gpt2", tokenizer)
    options = {"--method": "fls", "--sparsity": "0.5", "--calib": str(root / "calib.txt"), "--samples": "4",
               "--seq-len": "16", "--out": str(tmp_path / "never")}  # fmt: skip
    options.update(change)
    return ["prune", str(folder), *[x for kv in options.items() for x in kv]]


@pytest.mark.parametrize(
    ("change", "argument"),
    [
        (dict(folder="missing"), "MODEL_DIR"),
        (dict(folder="not_causal"), "MODEL_DIR"),
        (dict(folder="no_tokenizer"), "MODEL_DIR"),
        ({"--sparsity": "1.0"}, "--sparsity"),
        ({"--sparsity": "-0.1"}, "--sparsity"),
        ({"--sparsity": "0.3", "--pattern": "2:4"}, "--sparsity"),
        ({"--pattern": "3:2"}, "--pattern"),
        ({"--method": "fishleg"}, "--method"),
        ({"--calib": "nowhere.txt"}, "--calib"),
        ({"--samples": "4000"}, "--calib"),
        ({"--eval": "nowhere.txt"}, "--eval"),
        ({"--sequential": "layers"}, "--sequential"),
    ],
)
def test_a_bad_input_is_one_line_naming_it_and_exit_two(tmp_path, texts, capsys, change, argument):
    root, tokenizer = texts
    if change.get("folder") == "missing":
        change["folder"] = tmp_path / "missing"
    elif change.get("folder") == "not_causal":
        change["folder"] = tmp_path / "vision"
        transformers.ResNetConfig().save_pretrained(change["folder"])
    elif change.get("folder") == "no_tokenizer":
        change["folder"] = tmp_path / "bare"
        CONFIGS["gpt2"]().save_pretrained(change["folder"])
    with pytest.raises(SystemExit) as exit_:
        main(_bad(tmp_path, texts, **change))
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1 and argument in lines[0], lines
    assert not (tmp_path / "never").exists()


def test_prune_model_puts_options_over_the_recipe_and_the_gpt_study_passes_label_samples():
    torch.manual_seed(0)
    model = CONFIGS["gpt2"]()
    calib = torch.randint(0, 96, (4, 16))
    pruner = llm.prune_model(model, "kfac", 0.5, calib, batch_size=2, options={"label_samples": 3})
    assert pruner.method.label_samples == 3 and pruner.sparsity() > 0.49
    assert pruner.method.update_rule == llm.RECIPES["kfac"]["update"]  # the recipe's other options kept
    pruner.finalize()
    config = gpt.Config(label_samples=3)
    assert gpt._options("fls", config) == gpt._options("kfac", config) == gpt._options("obd", config)
    assert gpt._options("fls", config) == {"label_samples": 3}
    assert gpt._options("sparsegpt", config) == gpt._options("obert", config) == gpt._options("fls", gpt.Config()) == {}
    assert "3 sampled labels per input" in gpt.table([], config) and "sampled labels" not in gpt.table([], gpt.Config())
    seeded = gpt.Config(method_seed=5)
    assert gpt._options("fls", seeded) == gpt._options("kfac", seeded) == {"seed": 5}
    assert gpt._options("magnitude", seeded) == {} and "from seed 5" in gpt.table([], seeded)
