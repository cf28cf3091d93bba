"""weightzoo's checkpoint store: a catalog of model populations with content-addressed tensor packs.

    from zoo import Zoo
    z = Zoo.open()                     # $WEIGHTZOO_HOME or ~/.weightzoo
    pop = z.population("digits-mlp")   # a named set of same-architecture models
    W = pop.stack()                    # {tensor name: Tensor[N, ...]}
    df = z.sql("select * from model_overview")
"""

from zoo.errors import (
    ConfigError,
    CorruptFileError,
    DatasetError,
    DuplicateError,
    IntegrityError,
    MismatchError,
    NotFoundError,
    QueryError,
    StorageError,
    UnsafeFileError,
    ZooError,
)

__version__ = "0.1.0"

# The store classes are imported lazily, so `import zoo.errors` (used by every learner and streamed
# merges) does not pay for pandas, SQLAlchemy and DuckDB.
_LAZY = {
    "Zoo": "zoo.facade",
    "ModelQuery": "zoo.query.fluent",
    "Population": "zoo.query.fluent",
    **{name: "zoo.store.records" for name in (
        "ArchitectureInfo", "Edge", "GcReport", "ModelRecord", "NewModel", "PopulationInfo", "TableInfo",
        "VerifyReport"
    )},
}  # fmt: skip


def __getattr__(name: str):  # noqa: ANN202
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'zoo' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


__all__ = [
    "Zoo", "ModelQuery", "Population", "ModelRecord", "NewModel", "PopulationInfo", "ArchitectureInfo", "Edge",
    "TableInfo", "VerifyReport", "GcReport", "ZooError", "NotFoundError", "CorruptFileError", "UnsafeFileError", "MismatchError",
    "DuplicateError", "QueryError", "IntegrityError", "StorageError", "ConfigError", "DatasetError",
]  # fmt: skip
