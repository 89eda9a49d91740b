"""Gradual pruning: schedules, masks held through fine-tuning (any optimizer, accumulation, AMP), λ refined
between prunes, and a resumed run ending bit-identical to an uninterrupted one."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import fls_kernels as fls
from tests.pruning.helpers import SmallNet, assert_identical, loader, snapshot


def test_cubic_linear_constant_schedules():
    cubic = fls.CubicSchedule(0.2, 0.8, start=10, end=40, every=10)
    assert [cubic(t) for t in (0, 9, 10, 19, 20, 30, 39, 40, 100)] == pytest.approx(
        [0, 0, 0.2, 0.2, 0.8 - 0.6 * (2 / 3) ** 3, 0.8 - 0.6 * (1 / 3) ** 3, 0.8 - 0.6 * (1 / 3) ** 3, 0.8, 0.8]
    )
    linear = fls.LinearSchedule(0.0, 0.5, start=0, end=10, every=5)
    assert [linear(t) for t in (0, 4, 5, 10)] == pytest.approx([0, 0, 0.25, 0.5])
    assert fls.ConstantSchedule(0.3, at=2)(1) == 0 and fls.ConstantSchedule(0.3, at=2)(2) == 0.3


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: fls.CubicSchedule(0.8, 0.5, start=0, end=10), "final sparsity"),
        (lambda: fls.CubicSchedule(0.1, 0.5, start=10, end=10), "end"),
        (lambda: fls.CubicSchedule(0.1, 0.5, start=0, end=10, every=0), "every"),
        (lambda: fls.LinearSchedule(0.1, 1.0, start=0, end=10), "final"),
        (lambda: fls.ConstantSchedule(0.5, at=-1), "at"),
    ],
)
def test_bad_schedules(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_schedule_going_backwards_raises_and_leaves_the_model():
    model = SmallNet()
    pruner = fls.MagnitudePruner(model, schedule=lambda t: 0.5 if t == 0 else 0.3)
    pruner.step()
    before = snapshot(model)
    with pytest.raises(ValueError, match="schedule: at step 1, sparsity: 0.3 is below"):
        pruner.step()
    assert_identical(model, before)
    with pytest.raises(RuntimeError, match="no schedule"):
        fls.MagnitudePruner(SmallNet()).step()


def train_gradually(model, pruner, data, steps, *, opt=None, accumulate=1, amp=False, start=0):
    opt = opt or torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", enabled=amp)
    for t in range(start, steps):
        opt.zero_grad()
        for k in range(accumulate):
            x, y = data[(t * accumulate + k) % len(data)]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = torch.nn.functional.cross_entropy(model(x), y) / accumulate
            scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        pruner.step()
    return opt


def check_masks(pruner, opt):
    for v in pruner.views:
        mask = pruner.masks[v.name]
        assert (v.weight[~mask] == 0).all() and (v.weight.grad[~mask] == 0).all()
        for value in opt.state[v.weight].values():
            if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                assert (value[~mask] == 0).all()


@pytest.mark.parametrize("kind", ["fls", "magnitude"])
@pytest.mark.parametrize(
    "accumulate,amp,optimizer",
    [(1, False, "adam"), (2, False, "sgd"), (1, True, "adamw")],
    ids=["adam", "accumulation-sgd", "amp-adamw"],
)
def test_gradual_run_reaches_exact_final_sparsity(kind, accumulate, amp, optimizer):
    model = SmallNet()
    schedule = fls.CubicSchedule(0.2, 0.8, start=2, end=10, every=2)
    if kind == "fls":
        pruner = fls.FishLegPruner(model, schedule=schedule, init_batches=1, refine_steps=2, gradual_aux_steps=1)
        pruner.fit(loader(), steps=3)
    else:
        pruner = fls.MagnitudePruner(model, schedule=schedule)
    opt = {
        "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
        "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    }[optimizer](model.parameters())
    sparsities = []
    for t in range(12):
        train_gradually(model, pruner, loader(4), t + 1, opt=opt, accumulate=accumulate, amp=amp, start=t)
        sparsities.append(pruner.sparsity())
        check_masks(pruner, opt)
    d = pruner.num_prunable()
    assert sparsities[1] == 0 and sparsities[2] == pytest.approx(math.ceil(0.2 * d) / d)
    assert sparsities == sorted(sparsities)
    assert pruner.num_pruned() == math.ceil(round(0.8 * d, 9))
    if kind == "fls":
        # 3 fit steps + aux refinement on the non-pruning steps + refine_steps before pruning sub-steps.
        assert len(pruner.method.fitter.history) > 3 + 6


def run(interrupt_at: int | None, steps: int = 9):
    torch.manual_seed(0)
    model = SmallNet()
    data = loader(5)
    schedule = fls.CubicSchedule(0.3, 0.7, start=1, end=7, every=3)

    def make(m):
        return fls.FishLegPruner(m, schedule=schedule, init_batches=1, refine_steps=2, substeps=2, seed=3)

    pruner = make(model)
    pruner.fit(data, steps=4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    if interrupt_at is None:
        train_gradually(model, pruner, data, steps, opt=opt)
        return model, pruner
    train_gradually(model, pruner, data, interrupt_at, opt=opt)
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "pruner": pruner.state_dict()})
    # A fresh process: new objects, restored from the checkpoint, data re-attached at the saved position.
    model = SmallNet()
    pruner = make(model)
    pruner.load_state_dict(saved["pruner"])
    model.load_state_dict(saved["model"])
    pruner.fit(data, steps=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    opt.load_state_dict(saved["opt"])
    train_gradually(model, pruner, data, steps, opt=opt, start=interrupt_at)
    return model, pruner


@pytest.mark.parametrize("interrupt_at", [2, 5])
def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(interrupt_at):
    model_a, pruner_a = run(None)
    model_b, pruner_b = run(interrupt_at)
    for k, v in model_a.state_dict().items():
        assert torch.equal(v, model_b.state_dict()[k]), k
    for k, m in pruner_a.masks.items():
        assert torch.equal(m, pruner_b.masks[k])
    for a, b in zip(pruner_a.method.blocks.parameters(), pruner_b.method.blocks.parameters()):
        assert torch.equal(a, b)
    assert pruner_a.method.fitter.history == pruner_b.method.fitter.history
    assert pruner_a.sparsity() > 0.6


def test_progress_bar_follows_the_schedule(capsys):
    model = SmallNet()
    pruner = fls.MagnitudePruner(model, schedule=fls.LinearSchedule(0.1, 0.5, start=0, end=4), progress=True)
    for _ in range(5):
        pruner.step()
    pruner.finalize()
    err = capsys.readouterr().err
    assert "gradual" in err and "sparsity=0.5" in err
