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
from zoo.query import ModelQuery, Population
from zoo.records import ArchitectureInfo, Edge, GcReport, ModelRecord, NewModel, PopulationInfo, VerifyReport
from zoo.store import Zoo

__version__ = "0.1.0"

__all__ = [
    "Zoo", "ModelQuery", "Population", "ModelRecord", "NewModel", "PopulationInfo", "ArchitectureInfo", "Edge",
    "VerifyReport", "GcReport", "ZooError", "NotFoundError", "CorruptFileError", "UnsafeFileError", "MismatchError",
    "DuplicateError", "QueryError", "IntegrityError", "StorageError", "ConfigError", "DatasetError",
]  # fmt: skip
