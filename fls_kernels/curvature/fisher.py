"""The Fisher of a model restricted to its prunable layers: exact Fisher-vector products and the
statistics (K-FAC factors, diagonal) that initialise Q.

F = (1/B) Σ_b J_bᵀ H_b J_b — computed with one forward-mode JVP and one VJP through ``torch.func``.
Curvature is always taken with the model in eval mode (no dropout, BatchNorm running statistics); the
modes are restored afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vjp

from fls_kernels.curvature.captures import Capture, LayerCapture
from fls_kernels.curvature.likelihoods import Likelihood
from fls_kernels.data import check_finite, eval_mode, model_output, split_batch
from fls_kernels.distributed.comm import attempt
from fls_kernels.layers.attention import unfused
from fls_kernels.layers.views import LayerView

if TYPE_CHECKING:
    from fls_kernels.distributed.comm import Comm


FVP_MODES = ("auto", "jvp", "double_vjp")
_UNREACHED = (
    ": it was not called, or its output does not reach the tensor the likelihood reads (see output=); leave it "
    "out with ignore="
)
log = logging.getLogger("fls_kernels.fit")


class ModelCurvature:
    """Curvature queries on ``model`` w.r.t. the parameters of ``views``.

    Args:
        model: the network.
        views: its prunable layers.
        likelihood: the output distribution.
        inputs: batch → (args, kwargs) for the model (default :func:`split_batch`).
        output: model output → the tensor the likelihood reads (default :func:`~fls_kernels.data.model_output`:
            a tensor, a tuple's first element, or ``logits`` / ``last_hidden_state``).
        fvp_mode: how :meth:`fvp` gets J v: "jvp" (forward mode), "double_vjp" (reverse over reverse: J v =
            ∂⟨Jᵀu, v⟩/∂u, for models with ops that have no forward-mode AD) or "auto" (jvp, switching to double_vjp
            for good the first time an op has no forward-mode AD).
        fvp_chunk: largest number of samples per forward/backward of :meth:`fvp` (None: the whole batch); the
            products of the chunks are averaged, so only activations of ``fvp_chunk`` samples (× tokens) live
            at once — memory bounded independently of batch size and sequence length × batch.
    """

    def __init__(
        self,
        model: nn.Module,
        views: list[LayerView],
        likelihood: Likelihood,
        *,
        inputs: Callable[[object], tuple[tuple, dict]] = split_batch,
        output: Callable[[object], Tensor] | None = None,
        fvp_chunk: int | None = None,
        fvp_mode: str = "auto",
    ) -> None:
        if fvp_chunk is not None and not (isinstance(fvp_chunk, int) and fvp_chunk >= 1):
            raise ValueError(f"fvp_chunk: expected a positive int or None, got {fvp_chunk!r}")
        if fvp_mode not in FVP_MODES:
            raise ValueError(f"fvp_mode: expected one of {FVP_MODES}, got {fvp_mode!r}")
        self.fvp_mode = fvp_mode
        self.model = model
        self.views = views
        self.likelihood = likelihood
        self.inputs = inputs
        self.output = output or model_output
        self.fvp_chunk = fvp_chunk

    def _params(self) -> dict[str, Tensor]:
        return {name: p.detach() for v in self.views for name, p in v.parameters().items()}

    def _function(self, batch: object) -> Callable[[dict[str, Tensor]], Tensor]:
        return self._call(*self.inputs(batch))

    def _call(self, args: tuple, kwargs: dict) -> Callable[[dict[str, Tensor]], Tensor]:
        return lambda params: self.output(functional_call(self.model, params, args, kwargs, strict=False))

    def batch_size(self, batch: object) -> int:
        """Samples in ``batch``: the leading size of its first tensor input."""
        args, kwargs = self.inputs(batch)
        for t in list(args) + list(kwargs.values()):
            if isinstance(t, Tensor):
                return t.shape[0]
        raise TypeError(f"loader: no tensor among the model inputs of a {type(batch).__name__} batch")

    def unreached(self, batch: object) -> list[int]:
        """Indices of the views none of whose parameters reach the tensor the likelihood reads: ∂ out/∂θ_l is
        structurally absent (an unused head, a pooler beside ``last_hidden_state``). One forward and one
        backward of ``batch`` in eval mode; their Fisher is zero, so they have no curvature to prune by."""
        params = {k: p.requires_grad_() for k, p in self._params().items()}
        with eval_mode(self.model), unfused(self.model, math_sdpa=False), torch.enable_grad():
            out = self._function(batch)(params)
            if not (isinstance(out, Tensor) and out.requires_grad):
                return list(range(len(self.views)))
            grads = torch.autograd.grad(out.float().sum(), list(params.values()), allow_unused=True)
        reached = {name for name, g in zip(params, grads) if g is not None}
        return [i for i, v in enumerate(self.views) if not reached.intersection(v.parameters())]

    def fvp(self, batch: object, vectors: list[Tensor]) -> list[Tensor]:
        """F v for one batch: F = (1/B) Σ_b J_bᵀ H_b J_b. vectors: one [m, n] per view; returns the same.

        With ``fvp_chunk``, the batch's tensor inputs are split along their first dimension and the chunks'
        products averaged with weights B_c / B (the same F v, in bounded memory).
        """
        args, kwargs = self.inputs(batch)
        rows = self.batch_size(batch)
        chunk = self.fvp_chunk
        if chunk is None or rows <= chunk:
            return self._fvp(args, kwargs, vectors)
        total: list[Tensor] | None = None
        for start in range(0, rows, chunk):
            part = slice(start, min(start + chunk, rows))

            def cut(x, part=part):
                return x[part] if isinstance(x, Tensor) and x.dim() and x.shape[0] == rows else x

            products = self._fvp(tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}, vectors)
            weight = (part.stop - part.start) / rows
            scaled = [weight * p for p in products]
            total = scaled if total is None else [t + p for t, p in zip(total, scaled)]
        return total

    def _fvp(self, args: tuple, kwargs: dict, vectors: list[Tensor]) -> list[Tensor]:
        params = self._params()
        tangents = {}
        for view, v in zip(self.views, vectors):
            tangents.update(zip(view.parameters(), view.split(v)))
        f = self._call(args, kwargs)
        with eval_mode(self.model), unfused(self.model), torch.no_grad():
            out, jv = self._jvp(f, params, tangents)
            hjv = self.likelihood.hvp(out, jv) / out.shape[0]
            _, pullback = vjp(f, params)
            (grads,) = pullback(hjv)
        return [
            view.to_matrix([grads[name] for name in view.parameters()], v.dtype) for view, v in zip(self.views, vectors)
        ]

    def _jvp(self, f, params: dict[str, Tensor], tangents: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(f(θ), J v) by :attr:`fvp_mode`."""
        if self.fvp_mode != "double_vjp":
            try:
                return jvp(f, (params,), (tangents,))
            except NotImplementedError as err:  # an op (or autograd.Function) without forward-mode AD
                if self.fvp_mode == "jvp" or ("forward" not in str(err).lower() and "jvp" not in str(err)):
                    raise
                log.info("fvp: %s; using reverse-over-reverse products from now on", str(err).splitlines()[0])
                self.fvp_mode = "double_vjp"
        out, pullback = vjp(f, params)
        _, pull_twice = vjp(lambda u: pullback(u)[0], torch.zeros_like(out))  # u ↦ Jᵀu is linear: its VJP is J
        (jv,) = pull_twice(tangents)
        return out, jv

    def statistics(
        self,
        batches: Iterator[object],
        num_batches: int,
        *,
        kfac: bool,
        diag: bool = True,
        generator: torch.Generator | None = None,
        comm: Comm | None = None,
        captures: list[Capture] | None = None,
        label_samples: int = 1,
    ) -> list[LayerStats]:
        """Per-layer Ā = E[a aᵀ], G = E[Σ_t δ δᵀ] and diag F̂ = E[g ⊙ g] from per-sample sampled-label
        gradients g (δ: output gradients, a: input patches, t: locations/tokens); with ``diag=False`` only
        tr F̂ (:attr:`LayerStats.diag_trace`). ``label_samples`` k: k labels drawn per input, one backward pass
        each, the expectations taken over all k draws (their Monte-Carlo variance falls as 1/k; Ā is unchanged).

        With ``comm``, every rank reads its own batches; the sums are added over ranks and the sampled labels
        are those of one process reading the ranks' batches concatenated in rank order. With ``captures``, each
        batch's patches and output gradients are also appended to it as a :class:`Capture` (layer-wise FVPs).
        """
        stats = [LayerStats(v, kfac, diag) for v in self.views]

        def sink(i: int, a: Tensor, d: Tensor) -> None:
            stats[i].add_patches(a, d)

        if isinstance(label_samples, bool) or not isinstance(label_samples, int) or label_samples < 1:
            raise ValueError(f"label_samples: expected a positive int, got {label_samples!r}")
        if captures is not None and label_samples != 1:
            raise ValueError("label_samples: captures for layer-wise FVPs hold one draw per batch; use 1")
        self._sampled_passes(batches, num_batches, generator, comm, sink, captures, label_samples)
        if comm is not None:
            parts = [t for s in stats for t in s.totals()]
            counts = torch.tensor([float(s.samples) for s in stats], dtype=torch.float64, device=comm.device)
            comm.all_reduce_(parts)
            counts = comm.check(counts)
            for s, c in zip(stats, counts.tolist()):
                s.samples = int(c)
        return stats

    def capture(
        self,
        batches: Iterator[object],
        num_batches: int,
        *,
        generator: torch.Generator | None = None,
        comm: Comm | None = None,
    ) -> list[Capture]:
        """``num_batches`` batches' patches and sampled-label output gradients at the current weights, one
        :class:`Capture` per batch (the same sampled labels as :meth:`statistics` would draw)."""
        captures: list[Capture] = []
        self._sampled_passes(batches, num_batches, generator, comm, None, captures)
        return captures

    def _sampled_passes(self, batches, num_batches, generator, comm, sink, captures, draws: int = 1) -> None:
        """Forward + ``draws`` sampled-label backward passes of each of ``num_batches`` batches; every layer's
        (patches, output grads) go to ``sink(i, a, d)`` once per draw and, with ``captures``, into one
        :class:`Capture` per batch.

        A layer called k times in one forward (a re-used module) delivers once, after the gradients of all k
        outputs arrived, with the calls' locations concatenated (a = [a₁ … a_k] along T): its per-sample gradient
        Σ_calls Σ_t δ aᵀ is then the true one, and K-FAC treats the calls as more locations."""
        calls: dict[int, int] = {}  # forward calls of layer i in this batch
        pending: dict[int, list[tuple[Tensor, Tensor]]] = {}
        layers: dict[int, LayerCapture] = {}

        def deliver(i: int, a: Tensor, d: Tensor) -> None:
            if sink is not None:
                sink(i, a, d)
            if captures is not None:
                layers[i] = LayerCapture(self.views[i], a, d)

        def on_grad(i: int, x: Tensor, g: Tensor) -> None:
            view = self.views[i]
            part = (view.patches(x), view.output_grads(g.detach()))
            if calls[i] == 1:
                deliver(i, *part)
                return
            got = pending.setdefault(i, [])
            got.append(part)
            if len(got) == calls[i]:
                del pending[i]
                deliver(i, torch.cat([a for a, _ in got], dim=2), torch.cat([d for _, d in got], dim=2))

        def hook(module, args, output, i: int) -> None:
            calls[i] = calls.get(i, 0) + 1
            output.register_hook(partial(on_grad, i, args[0].detach()))

        handles = [
            module.register_forward_hook(partial(hook, i=i))
            for i, view in enumerate(self.views)
            for module in view.modules
        ]
        try:
            with eval_mode(self.model), unfused(self.model, math_sdpa=False):
                for b in range(num_batches):
                    out, params = None, None
                    calls.clear()
                    pending.clear()
                    with attempt(comm), torch.enable_grad():
                        batch = next(batches)
                        check_finite(batch, getattr(batches, "last_index", b))
                        params = {k: p.requires_grad_() for k, p in self._params().items()}
                        out = self._function(batch)(params)
                    rows = None
                    if comm is not None:
                        sizes = comm.sizes(out.shape[0] if out is not None else 0)
                        rows = (sum(sizes[: comm.rank]), sum(sizes))
                    for draw in range(draws):
                        with attempt(comm), torch.enable_grad():
                            target = (
                                self.likelihood.sample(out, generator, rows)
                                if rows
                                else self.likelihood.sample(out, generator)
                            )
                            loss = self.likelihood.nll(out, target).sum()
                            torch.autograd.grad(loss, list(params.values()), retain_graph=draw + 1 < draws)
                            if pending:
                                i = next(iter(pending))
                                raise ValueError(
                                    f"model: layer {self.views[i].name!r} was called {calls[i]} times but only "
                                    f"{len(pending[i])} of its outputs reach the model output; prune it only if "
                                    "every call does (or exclude it with ignore=)"
                                )
                    if captures is not None:
                        missing = [v.name for i, v in enumerate(self.views) if i not in layers]
                        if missing:
                            raise RuntimeError(f"no statistics were collected for layer {missing[0]!r}{_UNREACHED}")
                        captures.append(Capture([[layers[i] for i in range(len(self.views))]]))
                        layers.clear()
        finally:
            for h in handles:
                h.remove()
            pending.clear()


@dataclass
class _Acc:
    total: Tensor | None = None

    def add(self, x: Tensor) -> None:
        self.total = x if self.total is None else self.total + x


class LayerStats:
    """Running sums of one layer's curvature statistics (float64). With ``diag=False`` only the trace of diag F̂
    is kept (:attr:`diag_trace`), which costs O(T²(n + m)) per sample instead of O(T·m·n) where T is small."""

    def __init__(self, view: LayerView, kfac: bool, diag: bool = True) -> None:
        self.view = view
        self.kfac = kfac
        self.keeps_diag = diag
        self.samples = 0
        self._act, self._grad, self._diag = _Acc(), _Acc(), _Acc()

    def add(self, x: Tensor, grad_out: Tensor) -> None:
        """Add a batch from the layer's input ``x`` and the gradient w.r.t. its output."""
        self.add_patches(self.view.patches(x), self.view.output_grads(grad_out))

    def add_patches(self, a: Tensor, d: Tensor) -> None:
        """Add a batch from its patches a [B, g, T, n] and output gradients d [B, g, T, m/g]."""
        a, d = a.to(torch.float64), d.to(torch.float64)
        B, g, T, n = a.shape
        self.samples += B
        if self.kfac:
            self._act.add(torch.einsum("bgtn,bgtk->nk", a, a) / (T * g))
            flat = d.transpose(1, 2).reshape(B, T, -1)
            self._grad.add(torch.einsum("btm,btk->mk", flat, flat))
        k = d.shape[-1]
        if not self.keeps_diag and T * (n + k) < n * k:
            # ‖Σ_t δ_t a_tᵀ‖²_F = Σ_{t,s} (a_t·a_s)(δ_t·δ_s): Gram matrices of the locations, not the gradients
            gram = torch.einsum("bgtn,bgsn->bgts", a, a) * torch.einsum("bgtk,bgsk->bgts", d, d)
            self._diag.add(gram.sum().reshape(1))
            return
        # Per-sample gradients Σ_t δ aᵀ, in chunks to bound memory at ~2²⁴ elements.
        per = max(1, (1 << 24) // max(1, self.view.m * self.view.n))
        acc = torch.zeros(g, k, n, dtype=torch.float64, device=a.device)
        for s in range(0, B, per):
            grads = torch.einsum("bgtm,bgtn->bgmn", d[s : s + per], a[s : s + per])
            acc += (grads * grads).sum(0)
        self._diag.add(acc.reshape(self.view.m, self.view.n) if self.keeps_diag else acc.sum().reshape(1))

    def totals(self) -> list[Tensor]:
        """The running sums (zeros where nothing was added yet), for adding them over ranks in place."""
        m, n = self.view.m, self.view.n
        device, f64 = self.view.weight.device, torch.float64
        diag = (m, n) if self.keeps_diag else (1,)
        shapes = [(self._diag, diag)] + ([(self._act, (n, n)), (self._grad, (m, m))] if self.kfac else [])
        for acc, shape in shapes:
            if acc.total is None:
                acc.total = torch.zeros(shape, dtype=f64, device=device)
        return [acc.total for acc, _ in shapes]

    def _mean(self, acc: _Acc) -> Tensor:
        if acc.total is None or self.samples == 0:
            raise RuntimeError(f"no statistics were collected for layer {self.view.name!r}{_UNREACHED}")
        return acc.total / self.samples

    @property
    def act_cov(self) -> Tensor:
        """Ā: [n, n]."""
        return self._mean(self._act)

    @property
    def grad_cov(self) -> Tensor:
        """G: [m, m]."""
        return self._mean(self._grad)

    @property
    def diag(self) -> Tensor:
        """diag F̂: [m, n] (statistics taken with ``diag=True``)."""
        if not self.keeps_diag:
            raise RuntimeError(f"layer {self.view.name!r}: only the trace of diag F̂ was kept (diag=False)")
        return self._mean(self._diag)

    @property
    def diag_trace(self) -> float:
        """tr F̂ = Σ diag F̂ (kept with either ``diag``)."""
        return float(self._mean(self._diag).sum())
