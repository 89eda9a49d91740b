"""The quality studies' methods, built from the registry (:data:`fls_kernels.PRUNERS`).

A study names its rows by label (e.g. "FLS-uniform", "oBERT"), each one a registry method with the study's
options: ``{label: (registry name, options(**context) → dict)}``. Every registered method that no label runs
appears as well, under its registry name and with its own defaults, so a new method is in every study by its
registry line alone. The options a study shares (seed, likelihood, damping, …) go to each method that has them;
an unknown label is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import fls_kernels as fls
from fls_kernels.pruning.method import has_option

#: label → (registry name, options from the study's context); ``None`` options: the method's defaults
Study = Mapping[str, tuple[str, Callable[..., dict] | None]]


def labels(study: Study) -> tuple[str, ...]:
    """The study's labels, then every registered method that none of them runs, by its registry name."""
    named = {name for name, _ in study.values()}
    return (*study, *(name for name in fls.PRUNERS if name not in named and name not in study))


def resolve(study: Study, label: str) -> tuple[type[fls.Pruner], Callable[..., dict] | None]:
    """(pruner class, the study's options) of ``label``; ValueError naming it when the study has no such row."""
    if label in study:
        name, options = study[label]
        return fls.PRUNERS[name], options
    if label in labels(study):
        return fls.PRUNERS[label], None
    raise ValueError(f"method: unknown {label!r}; choose from {list(labels(study))}")


def build(
    study: Study, label: str, model, shared: Mapping[str, object], context: Mapping[str, object], **pruner_args
) -> fls.Pruner:
    """The pruner of ``label`` on ``model``: the study's options (called with ``context``), over the ``shared``
    method options that the method has, with ``pruner_args`` (pattern, schedule, include, … : every pruner's)."""
    cls, options = resolve(study, label)
    chosen = {k: v for k, v in shared.items() if has_option(cls.method_class, k)}
    chosen.update(options(**context) if options is not None else {})
    return cls(model, **chosen, **pruner_args)


def layerwise(study: Study, label: str) -> bool:
    """Whether ``label``'s method prunes layer by layer in one pass (one-shot as published, no sub-steps)."""
    return resolve(study, label)[0].method_class.layerwise


__all__ = ["Study", "build", "labels", "layerwise", "resolve"]
