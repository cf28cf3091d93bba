"""Model merging: a registry of methods over single tensors, and a streaming merge engine.

    from analysis.merging import get_method, merge, MergeConfig
    ties = get_method("ties")
    merged = ties([t1, t2, t3], base, density=0.5)          # one tensor name
    res = merge(MergeConfig.from_yaml("merge.yml"), out_dir="out/", zoo=z, to_zoo=True)

See docs/merging.md.
"""

from analysis.merging.config import MergeConfig, ModelRef
from analysis.merging.engine import MergeResult, merge, merge_state_dicts
from analysis.merging.registry import (
    MergeMethod,
    ParamSpec,
    TensorContext,
    get_method,
    list_methods,
    merge_method,
    register,
    unregister,
)

__all__ = [
    "MergeConfig", "ModelRef", "MergeResult", "merge", "merge_state_dicts", "MergeMethod", "ParamSpec", "TensorContext", "get_method", "list_methods", "merge_method", "register",
    "unregister",
]  # fmt: skip
