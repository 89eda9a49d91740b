"""Output likelihoods p(y | f(x)): sampling, negative log-likelihood and the output-Hessian product.

The true Fisher is F = E_x[Jᵀ H J], with J the Jacobian of the model output f and H = ∇²_f(−log p(ŷ|f)),
which for these families does not depend on ŷ:
    categorical: H v = p ⊙ v − p (pᵀ v)      (p = softmax of the logits, class dimension last)
    Bernoulli:   H v = p(1 − p) ⊙ v           (p = sigmoid of the logits)
    Gaussian σ:  H v = v / σ²
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


class Likelihood:
    """Base class. ``output`` is the model output, batch dimension first.

    Subclasses define sampling through :meth:`from_noise` (ŷ from per-row uniform or normal noise), so that
    shards of a batch split over ranks draw exactly the targets one process draws for the whole batch.
    """

    name = "likelihood"
    #: "uniform" or "normal": the noise :meth:`from_noise` reads.
    noise = "uniform"

    def sample(
        self, output: Tensor, generator: torch.Generator | None = None, rows: tuple[int, int] | None = None
    ) -> Tensor:
        """Targets ŷ ∼ p(·|output), without gradient.

        ``rows`` = (offset, total): ``output`` holds rows offset … offset + B of a batch of ``total`` rows; the
        noise of all ``total`` rows is drawn and this shard's slice used.
        """
        offset, total = rows if rows is not None else (0, output.shape[0])
        shape = (total, *self.noise_shape(output))
        draw = torch.rand if self.noise == "uniform" else torch.randn
        dtype = torch.float64 if output.dtype == torch.float64 else torch.float32
        noise = draw(shape, generator=generator, device=output.device, dtype=dtype)
        return self.from_noise(output.detach(), noise[offset : offset + output.shape[0]])

    def noise_shape(self, output: Tensor) -> tuple[int, ...]:
        """Per-row shape of the noise."""
        return tuple(output.shape[1:])

    def from_noise(self, output: Tensor, noise: Tensor) -> Tensor:
        """ŷ from the output and its noise."""
        raise NotImplementedError

    def nll(self, output: Tensor, target: Tensor) -> Tensor:
        """−log p(target | output) per sample: [B] (summed over every non-batch dimension)."""
        raise NotImplementedError

    def hvp(self, output: Tensor, tangent: Tensor) -> Tensor:
        """H · tangent per sample, where H is the Hessian of the nll w.r.t. the output."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Categorical(Likelihood):
    """Softmax over the last dimension of the output (logits [B, C] or [B, ..., C])."""

    name = "categorical"

    def noise_shape(self, output):
        return tuple(output.shape[1:-1])

    def from_noise(self, output, noise):
        """Inverse CDF: the first class whose cumulative probability exceeds u ∼ U[0, 1)."""
        cdf = torch.softmax(output.float(), dim=-1).cumsum(-1)
        u = noise.unsqueeze(-1) * cdf[..., -1:]  # scale by the total so rounding never runs past the last class
        return (cdf <= u).sum(-1).clamp_max(output.shape[-1] - 1)

    def nll(self, output, target):
        logp = F.log_softmax(output, dim=-1)
        picked = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        return -picked.reshape(output.shape[0], -1).sum(1)

    def hvp(self, output, tangent):
        p = torch.softmax(output.detach(), dim=-1)
        return p * tangent - p * (p * tangent).sum(-1, keepdim=True)


class Bernoulli(Likelihood):
    """Independent Bernoulli outputs with logits."""

    name = "bernoulli"

    def from_noise(self, output, noise):
        return (noise < torch.sigmoid(output.float())).to(output.dtype)

    def nll(self, output, target):
        loss = F.binary_cross_entropy_with_logits(output, target, reduction="none")
        return loss.reshape(output.shape[0], -1).sum(1)

    def hvp(self, output, tangent):
        p = torch.sigmoid(output.detach())
        return p * (1 - p) * tangent


class Gaussian(Likelihood):
    """Isotropic Gaussian around the output with standard deviation ``sigma``."""

    name = "gaussian"

    def __init__(self, sigma: float = 1.0) -> None:
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma: expected a positive finite number, got {sigma!r}")
        self.sigma = float(sigma)

    noise = "normal"

    def from_noise(self, output, noise):
        return output + self.sigma * noise.to(output.dtype)

    def nll(self, output, target):
        sq = (output - target) ** 2 / (2 * self.sigma**2)
        return sq.reshape(output.shape[0], -1).sum(1)

    def hvp(self, output, tangent):
        return tangent / self.sigma**2

    def __repr__(self) -> str:
        return f"Gaussian(sigma={self.sigma})"


_BY_NAME = {"categorical": Categorical, "bernoulli": Bernoulli, "gaussian": Gaussian}


def get_likelihood(spec: str | Likelihood) -> Likelihood:
    """A likelihood from its name ("categorical", "bernoulli", "gaussian") or an instance."""
    if isinstance(spec, Likelihood):
        return spec
    if isinstance(spec, str) and spec in _BY_NAME:
        return _BY_NAME[spec]()
    raise ValueError(f"likelihood: expected one of {sorted(_BY_NAME)} or a Likelihood, got {spec!r}")
