"""The catalog's tables (SQLAlchemy 2 ORM). Schema changes go through Alembic (zoo/migrations).

Everything is a model, and every model has lineage:

- ``architectures``: a config (JSON) that the architecture registry can turn into an ``nn.Module``.
- ``populations``: named sets of same-architecture models.
- ``models``: one row per stored set of weights (a checkpoint, a merge, a generated model, ...).
- ``tensors``: a model's manifest, ``(model, tensor name) -> blob``.
- ``blobs``: content-addressed tensors (id = sha256 of dtype, shape, bytes), with where they live in
  which pack and per-tensor statistics (a derived table for queries: norms, mean, std, abs max).
- ``packs``: immutable safetensors files, one per write batch.
- ``hyperparameters``, ``metrics`` (long form: name, split, step, value), ``tags``.
- ``lineage``: edges ``parent -> child`` with the operation and its parameters.
- ``derived_tables``: learner outputs written back with ``Zoo.write_table`` (predictions, embeddings,
  weight statistics): one row per named table; its data lives in immutable Parquet files under
  ``<root>/tables/`` (see :mod:`zoo.query.tables`).
- ``catalog_state``: a generation counter bumped by every write (cache invalidation for queries), a
  layout version bumped only when ``gc`` moves or deletes blobs (cache invalidation for blob locations),
  and where the packs live when they are not in ``<root>/packs`` (``packs_url``, e.g. a bucket).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class CatalogState(Base):
    __tablename__ = "catalog_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    layout_version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    #: bumped by every write that updates or deletes rows (appends leave it): SQL snapshots refresh by appends
    rewrite_version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    #: where the packs live when not in ``<root>/packs`` (``s3://bucket/prefix``, a folder); None: the default
    packs_url: Mapped[str | None] = mapped_column(String(2000), nullable=True)


class Architecture(Base):
    __tablename__ = "architectures"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    family: Mapped[str] = mapped_column(String(50))
    config: Mapped[str] = mapped_column(Text)  # canonical JSON
    config_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Population(Base):
    __tablename__ = "populations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    architecture_id: Mapped[int | None] = mapped_column(ForeignKey("architectures.id"), nullable=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Pack(Base):
    __tablename__ = "packs"
    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    nbytes: Mapped[int] = mapped_column(BigInteger)
    n_blobs: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Blob(Base):
    __tablename__ = "blobs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pack_id: Mapped[str] = mapped_column(ForeignKey("packs.id"), index=True)
    offset: Mapped[int] = mapped_column(BigInteger)  # absolute byte offset in the pack file
    nbytes: Mapped[int] = mapped_column(BigInteger)
    dtype: Mapped[str] = mapped_column(String(8))
    shape: Mapped[str] = mapped_column(String(200))  # JSON list
    numel: Mapped[int] = mapped_column(BigInteger)
    l2: Mapped[float | None] = mapped_column(Float, nullable=True)
    mean: Mapped[float | None] = mapped_column(Float, nullable=True)
    std: Mapped[float | None] = mapped_column(Float, nullable=True)
    absmax: Mapped[float | None] = mapped_column(Float, nullable=True)


class Model(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str | None] = mapped_column(String(300), unique=True, nullable=True)
    population_id: Mapped[int | None] = mapped_column(ForeignKey("populations.id"), nullable=True, index=True)
    architecture_id: Mapped[int | None] = mapped_column(ForeignKey("architectures.id"), nullable=True, index=True)
    run: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    op: Mapped[str] = mapped_column(String(100), default="add")
    source: Mapped[str | None] = mapped_column(Text, nullable=True)
    n_params: Mapped[int] = mapped_column(BigInteger, default=0)
    nbytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class TensorEntry(Base):
    __tablename__ = "tensors"
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(300), primary_key=True)
    blob_id: Mapped[str] = mapped_column(ForeignKey("blobs.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)


class Hyperparameter(Base):
    __tablename__ = "hyperparameters"
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[str] = mapped_column(Text)  # JSON
    value_num: Mapped[float | None] = mapped_column(Float, nullable=True)
    value_text: Mapped[str | None] = mapped_column(Text, nullable=True)


class Metric(Base):
    __tablename__ = "metrics"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    split: Mapped[str] = mapped_column(String(50), default="")
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    value: Mapped[float] = mapped_column(Float)
    __table_args__ = (Index("ix_metrics_model_name", "model_id", "name", "split"), Index("ix_metrics_name", "name", "split"))


class LineageEdge(Base):
    __tablename__ = "lineage"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    child_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(100), default="parent")
    op: Mapped[str] = mapped_column(String(100))
    params: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Tag(Base):
    __tablename__ = "tags"
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(200), primary_key=True, index=True)


class DerivedTable(Base):
    """A named table of learner outputs; its rows live in Parquet files (``files``, a JSON list)."""

    __tablename__ = "derived_tables"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    files: Mapped[str] = mapped_column(Text)  # JSON list of file names under <root>/tables/, in row order
    column_types: Mapped[str] = mapped_column(Text)  # JSON [[column, SQL type], ...]
    n_rows: Mapped[int] = mapped_column(BigInteger)
    nbytes: Mapped[int] = mapped_column(BigInteger)
    description: Mapped[str] = mapped_column(Text, default="")
    produced_by: Mapped[int | None] = mapped_column(
        ForeignKey("models.id", ondelete="SET NULL"), nullable=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


#: Tables exposed to ``Zoo.sql`` (all of them).
TABLES = [t.name for t in Base.metadata.sorted_tables]
