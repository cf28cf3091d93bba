"""generators: diffusion and flow-matching weight generators over canonicalised weights, judged against
memorisation baselines (see docs/generators.md).

    import generators
    rec = generators.train(zoo, "digits-mlp-seeds", method="flow", name="mlp-flow")
    run = generators.sample(zoo, "mlp-flow", n=100)       # evaluated, stored in "mlp-flow/samples"
    run.verdict["verdict"]                                 # "novel" | "memorising" | "poor" | "degenerate"

Exports resolve lazily (importing the package costs nothing until one is used).
"""

from __future__ import annotations

from typing import Any

__all__ = ["train", "sample", "generator_from_zoo", "store_generator", "SampleRun", "GENERATORS", "DENOISERS",
           "make_generator", "WeightPreparer", "Generator", "evaluate_run", "finetune_inits"]  # fmt: skip

_WHERE = {
    "train": "generators.api", "sample": "generators.api", "generator_from_zoo": "generators.api",
    "store_generator": "generators.api", "SampleRun": "generators.api", "GENERATORS": "generators.registry",
    "DENOISERS": "generators.registry", "make_generator": "generators.registry", "WeightPreparer": "generators.prepare",
    "Generator": "generators.base", "evaluate_run": "generators.evaluate", "finetune_inits": "generators.api",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'generators' has no attribute {name!r}")
