"""weightspace: how weights are seen (see ../shared/DESIGN.md).

:mod:`weightspace.spec` -- permutation specs: which tensor axes share a hidden-neuron permutation.
:mod:`weightspace.views` -- stacked/normalised/flat views; :mod:`weightspace.graph` -- neural graphs (torch_geometric).
:mod:`weightspace.augment` -- augmentations; :mod:`weightspace.encoders` -- encoders (registry);
:mod:`weightspace.tasks` -- tasks, run-grouped splits, model search; :mod:`weightspace.cli` -- CLI plug-in.
"""

import importlib

# Resolved on first use, so that importing a submodule (e.g. the CLI plug-in, loaded by every
# `weightzoo` command) does not import torch.
_LAZY = {
    **{name: "weightspace.spec" for name in (
        "PermutationSpec", "apply_permutation", "conv", "dense", "identity_permutation", "invert_permutation",
        "norm", "random_permutation", "spec_for", "trace_spec",
    )},
    **{name: "weightspace.views" for name in ("FlatNormalizer", "LayerNormalizer", "flatten", "unflatten")},
}  # fmt: skip


def __getattr__(name: str):  # noqa: ANN202
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'weightspace' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


__all__ = [
    "LayerNormalizer",
    "FlatNormalizer",
    "flatten",
    "unflatten",
    "PermutationSpec",
    "spec_for",
    "trace_spec",
    "apply_permutation",
    "random_permutation",
    "identity_permutation",
    "invert_permutation",
    "dense",
    "conv",
    "norm",
]
