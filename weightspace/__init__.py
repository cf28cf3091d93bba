"""weightspace: how weights are seen (see ../shared/DESIGN.md).

:mod:`weightspace.spec` -- permutation specs: which tensor axes share a hidden-neuron permutation.
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

__all__ = [
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
