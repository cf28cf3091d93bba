"""weightspace: how weights are seen (see ../shared/DESIGN.md).

:mod:`weightspace.spec` -- permutation specs: which tensor axes share a hidden-neuron permutation.
:mod:`weightspace.views` -- stacked/normalised/flat views; :mod:`weightspace.graph` -- neural graphs (torch_geometric).
:mod:`weightspace.augment` -- augmentations; :mod:`weightspace.encoders` -- encoders (registry);
:mod:`weightspace.tasks` -- tasks, run-grouped splits, model search; :mod:`weightspace.cli` -- CLI plug-in.
"""

from weightspace.spec import (
    PermutationSpec,
    apply_permutation,
    conv,
    dense,
    identity_permutation,
    invert_permutation,
    norm,
    random_permutation,
    spec_for,
    trace_spec,
)
from weightspace.views import FlatNormalizer, LayerNormalizer, flatten, unflatten

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
