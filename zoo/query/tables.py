"""Derived tables: learner outputs (predictions, embeddings, weight statistics) written back into a zoo.

A derived table is a named table that :meth:`Zoo.sql` can query and join with the catalog::

    z.write_table("encoder_preds", df, produced_by=encoder.id)      # df: model_id, pred, embedding, ...
    z.sql("select m.name, p.pred from model_overview m join encoder_preds p on p.model_id = m.id")

Storage (see docs/decisions.md): the rows live in immutable Parquet files under
``<root>/tables/<name>.<random>.parquet``; the catalog's ``derived_tables`` row names the files, the
column types, the row count, the description and the producing model. A write goes like a pack
write: the file is written under ``tables/.tmp/``, fsynced and renamed, then the catalog transaction
commits (and bumps the generation, so the next ``Zoo.sql`` sees the table). A crash in between leaves
only an orphan file that ``verify`` reports and ``gc`` removes. ``replace`` writes one new file and
deletes the old ones after the commit; ``append`` adds one file, so earlier files are never rewritten.

Column types are normalised to a small set, each with one Arrow and one SQL (DuckDB) type:
integers -> ``BIGINT``, float16/32 -> ``FLOAT``, float64 -> ``DOUBLE``, ``BOOLEAN``, strings ->
``VARCHAR``, datetimes -> ``TIMESTAMP`` (microseconds; timezone-aware ones in UTC as ``TIMESTAMP WITH
TIME ZONE``), and vector columns (cells that are equal-length 1-D arrays, lists or tensors) ->
``FLOAT[d]`` / ``DOUBLE[d]`` / ``BIGINT[d]`` / ``BOOLEAN[d]`` (DuckDB fixed-size arrays: ``list_*``
and ``array_*`` functions such as ``array_cosine_similarity`` work on them).
"""

from __future__ import annotations

import functools
import json
import numbers
import re
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, delete, insert, select, update

from zoo.errors import ConfigError, DuplicateError, IntegrityError, MismatchError, NotFoundError
from zoo.store import schema as S
from zoo.store.records import TableInfo
from zoo.store.rows import chunks

if TYPE_CHECKING:
    import pyarrow as pa

    from zoo.store.backend import Backend

MODES = ("replace", "append")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_COLUMN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_RESERVED_PREFIXES = ("duckdb_", "pg_", "sqlite_", "information_schema")
_SCALARS = ("BOOLEAN", "BIGINT", "FLOAT", "DOUBLE", "VARCHAR", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE")
_VECTOR_RE = re.compile(r"^(BOOLEAN|BIGINT|FLOAT|DOUBLE)\[(\d+)\]$")


# ---------------------------------------------------------------------------------------------- names
@functools.lru_cache(maxsize=1)
def _sql_keywords() -> frozenset[str]:
    import duckdb

    con = duckdb.connect()
    try:
        rows = con.execute(
            "select keyword_name from duckdb_keywords() where keyword_category = 'reserved'"
        ).fetchall()
    finally:
        con.close()
    return frozenset(r[0].lower() for r in rows)


def reserved_names() -> set[str]:
    """Names a derived table may not take: the catalog's tables and the views of ``Zoo.sql``."""
    from zoo.query.analytics import VIEWS, WIDE

    return {*S.TABLES, *VIEWS, *WIDE, "alembic_version"}


def check_table_name(name: object) -> str:
    """A valid, unreserved table name, or :class:`ConfigError` saying why not."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"invalid table name {name!r}: use 1-63 lower-case letters, digits and underscores, starting "
            "with a letter (e.g. 'encoder_preds')"
        )
    if name in reserved_names() or name.startswith(_RESERVED_PREFIXES):
        raise ConfigError(
            f"table name {name!r} is taken by the catalog or the query engine "
            f"({', '.join(sorted(reserved_names()))}, duckdb_*, pg_*, sqlite_*); pick another name"
        )
    if name in _sql_keywords():
        raise ConfigError(
            f"table name {name!r} is a reserved SQL keyword; pick another name (e.g. '{name}_t')"
        )
    return name


# ---------------------------------------------------------------------------------------------- types
def arrow_type(sql_type: str) -> pa.DataType:
    """The Arrow type of one of the normalised SQL types."""
    import pyarrow as pa

    scalars = {
        "BOOLEAN": pa.bool_(), "BIGINT": pa.int64(), "FLOAT": pa.float32(), "DOUBLE": pa.float64(),
        "VARCHAR": pa.string(), "TIMESTAMP": pa.timestamp("us"), "TIMESTAMP WITH TIME ZONE": pa.timestamp("us", tz="UTC"),
    }  # fmt: skip
    if sql_type in scalars:
        return scalars[sql_type]
    m = _VECTOR_RE.match(sql_type)
    if m is None:
        raise IntegrityError(f"unknown column type {sql_type!r} in the catalog")
    return pa.list_(scalars[m.group(1)], int(m.group(2)))


def table_schema(stored: list[list[str]]) -> pa.Schema:
    """The Arrow schema of a table's stored ``[[column, SQL type], ...]``."""
    import pyarrow as pa

    return pa.schema([(c, arrow_type(t)) for c, t in stored])


def _vector_dim(sql_type: str) -> tuple[str, int] | None:
    m = _VECTOR_RE.match(sql_type)
    return (m.group(1), int(m.group(2))) if m else None


def _cell_kind(v: Any) -> str:
    if isinstance(v, str):
        return "str"
    if isinstance(v, bool | np.bool_):
        return "bool"
    if isinstance(v, int | np.integer):
        return "int"
    if isinstance(v, float | np.floating):
        return "float"
    if isinstance(v, datetime | date | np.datetime64):
        return "datetime"
    if isinstance(v, list | tuple | np.ndarray) or _is_tensor(v):
        return "vector"
    return type(v).__name__


def _is_tensor(v: Any) -> bool:
    return type(v).__module__.startswith("torch") and hasattr(v, "detach")


def _vector_column(col: str, s: pd.Series) -> tuple[pa.Array, str]:
    import pyarrow as pa

    null = np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in s], dtype=bool)
    cells = []
    for v in s[~null]:
        a = v.detach().cpu().numpy() if _is_tensor(v) else np.asarray(v)
        if a.ndim != 1:
            raise MismatchError(
                f"column {col!r} holds arrays of shape {a.shape}; vector cells must be 1-D (flatten them, "
                "e.g. [x.ravel() for x in cells])"
            )
        if a.dtype.kind not in "fiub":
            raise MismatchError(
                f"column {col!r} holds vectors of {a.dtype} values; vector cells must be numbers "
                "(floats, ints or bools) with no missing entries"
            )
        cells.append(a)
    dims = sorted({a.shape[0] for a in cells})
    if len(dims) > 1:
        raise MismatchError(
            f"column {col!r} is ragged: its vectors have lengths {dims[:6]}; every cell must have the same "
            "length (pad or split the column)"
        )
    if dims == [0]:
        raise MismatchError(f"column {col!r} holds empty vectors; vectors need at least one element")
    if not cells:
        raise MismatchError(
            f"column {col!r} has no values to infer its type from; drop it or give it a dtype"
        )
    kinds = {a.dtype.kind for a in cells}
    if "b" in kinds and len(kinds) > 1:
        raise MismatchError(f"column {col!r} mixes bool and numeric vectors; give every cell one type")
    if "f" in kinds:
        elem = (
            "FLOAT"
            if all(a.dtype.kind != "f" or a.dtype.itemsize <= 4 for a in cells) and kinds == {"f"}
            else "DOUBLE"
        )
    elif kinds == {"b"}:
        elem = "BOOLEAN"
    else:
        elem = "BIGINT"
    np_dtype = {"FLOAT": np.float32, "DOUBLE": np.float64, "BIGINT": np.int64, "BOOLEAN": np.bool_}[elem]
    d = dims[0]
    flat = np.zeros((len(s), d), dtype=np_dtype)
    if cells:
        flat[~null] = np.stack(cells).astype(np_dtype, copy=False)
    values = pa.array(flat.reshape(-1))
    arr = pa.FixedSizeListArray.from_arrays(values, d, mask=pa.array(null) if null.any() else None)
    return arr, f"{elem}[{d}]"


def _object_column(col: str, s: pd.Series) -> tuple[pa.Array, str]:
    import pyarrow as pa

    present = s[~s.isna()] if len(s) else s
    kinds = {_cell_kind(v) for v in present}
    if not kinds:
        raise MismatchError(
            f"column {col!r} has no values to infer its type from; give it a dtype "
            f"(e.g. frame.astype({{{col!r}: 'float64'}}))"
        )
    if "vector" in kinds:
        if kinds != {"vector"}:
            raise MismatchError(
                f"column {col!r} mixes vectors with {sorted(kinds - {'vector'})}; give every cell one type"
            )
        return _vector_column(col, s)
    if kinds == {"str"}:
        return pa.array(s, type=pa.string(), from_pandas=True), "VARCHAR"
    if kinds == {"bool"}:
        return pa.array(s, type=pa.bool_(), from_pandas=True), "BOOLEAN"
    if kinds == {"int"}:
        return _ints(col, s), "BIGINT"
    if kinds <= {"int", "float"}:
        return pa.array(s.astype("float64"), type=pa.float64(), from_pandas=True), "DOUBLE"
    if kinds == {"datetime"}:
        return _timestamps(col, pd.to_datetime(s))
    raise MismatchError(
        f"column {col!r} mixes types {sorted(kinds)}; a column must hold one type "
        "(numbers, strings, bools, datetimes, or equal-length vectors)"
    )


def _ints(col: str, s: pd.Series) -> pa.Array:
    import pyarrow as pa

    try:
        return pa.array(s, type=pa.int64(), from_pandas=True)
    except (pa.ArrowInvalid, OverflowError) as e:
        raise MismatchError(f"column {col!r} does not fit 64-bit integers: {e}") from None


def _timestamps(col: str, s: pd.Series) -> tuple[pa.Array, str]:
    import pyarrow as pa

    tz = isinstance(s.dtype, pd.DatetimeTZDtype)
    if tz:
        s = s.dt.tz_convert("UTC")
    arr = pa.array(s, from_pandas=True)
    typ = pa.timestamp("us", tz="UTC") if tz else pa.timestamp("us")
    return arr.cast(typ, safe=False), "TIMESTAMP WITH TIME ZONE" if tz else "TIMESTAMP"


def _column(col: str, s: pd.Series) -> tuple[pa.Array, str]:
    import pyarrow as pa

    dt = s.dtype
    if isinstance(dt, pd.CategoricalDtype):
        return _column(col, s.astype(dt.categories.dtype))
    if pd.api.types.is_bool_dtype(dt):
        return pa.array(s, type=pa.bool_(), from_pandas=True), "BOOLEAN"
    if pd.api.types.is_integer_dtype(dt):
        return _ints(col, s), "BIGINT"
    if pd.api.types.is_float_dtype(dt):
        if isinstance(dt, np.dtype):  # NaN is a value here (kept), not a missing one
            kind = "FLOAT" if dt.itemsize <= 4 else "DOUBLE"
            arr = s.to_numpy().astype(np.float32 if kind == "FLOAT" else np.float64, copy=False)
            return pa.array(arr), kind
        kind = (
            "FLOAT" if getattr(dt, "itemsize", 8) <= 4 else "DOUBLE"
        )  # nullable Float32/Float64: NA -> NULL
        return pa.array(s, type=arrow_type(kind), from_pandas=True), kind
    if pd.api.types.is_datetime64_any_dtype(dt):
        return _timestamps(col, s)
    if isinstance(dt, pd.StringDtype):
        return pa.array(s, type=pa.string(), from_pandas=True), "VARCHAR"
    if pd.api.types.is_object_dtype(dt):
        return _object_column(col, s)
    raise MismatchError(
        f"column {col!r} has dtype {dt}, which a derived table cannot hold; use numbers, strings, bools, "
        "datetimes, or equal-length vectors (convert it, e.g. with .astype(str))"
    )


def frame_to_arrow(frame: object) -> tuple[pa.Table, list[list[str]]]:
    """Check a DataFrame and convert it to an Arrow table of the normalised types.

    Returns ``(table, [[column, SQL type], ...])``. A named index is kept as column(s); an unnamed
    one is dropped. Raises :class:`ConfigError`/:class:`MismatchError` on anything it cannot store.
    """
    import pyarrow as pa

    if not isinstance(frame, pd.DataFrame):
        raise ConfigError(
            f"write_table needs a pandas DataFrame, not {type(frame).__name__}; wrap your data with "
            "pandas.DataFrame({'model_id': ids, 'pred': preds})"
        )
    if any(n is not None for n in frame.index.names):
        frame = frame.reset_index()
    if frame.shape[1] == 0:
        raise ConfigError("the DataFrame has no columns; a derived table needs at least one")
    cols = list(frame.columns)
    for c in cols:
        if not isinstance(c, str) or not _COLUMN_RE.match(c):
            raise ConfigError(
                f"invalid column name {c!r}: use 1-63 letters, digits and underscores, starting with a letter "
                "or underscore (rename it with frame.rename(columns={...}))"
            )
    low = [c.lower() for c in cols]
    if len(set(low)) != len(low):
        dup = sorted({c for c in cols if low.count(c.lower()) > 1})
        raise DuplicateError(
            f"duplicate column name(s) {dup} (SQL names ignore case); make every column name unique"
        )
    arrays, types = [], []
    for i, c in enumerate(cols):
        arr, typ = _column(c, frame.iloc[:, i])
        arrays.append(arr)
        types.append([c, typ])
    if "model_id" in cols:
        mid_type = dict(types)["model_id"]
        if mid_type != "BIGINT":
            raise MismatchError(f"column 'model_id' must hold integer model ids, not {mid_type} values")
        if arrays[cols.index("model_id")].null_count:
            raise MismatchError(
                "column 'model_id' has missing values; every row must name a model of the zoo"
            )
    return pa.Table.from_arrays(arrays, names=cols), types


def _conform(table: pa.Table, types: list[list[str]], stored: list[list[str]], name: str) -> pa.Table:
    """Cast appended rows to the stored column types, or refuse when the schemas differ."""
    have, want = dict(types), dict(stored)
    if set(have) != set(want):
        raise MismatchError(
            f"cannot append to table {name!r}: its columns are {list(want)}, the new rows have {list(have)}; "
            "give the same columns (or write with mode='replace')"
        )
    floats = {"FLOAT", "DOUBLE"}
    arrays = []
    for col, typ in stored:
        got = have[col]
        ok = got == typ
        if not ok and col != "model_id":  # numeric widening/narrowing between ints and floats
            if typ in floats and got in floats | {"BIGINT"}:
                ok = True
            gv, wv = _vector_dim(got), _vector_dim(typ)
            if gv and wv and gv[1] == wv[1] and wv[0] in floats and gv[0] in floats | {"BIGINT"}:
                ok = True
        if not ok:
            raise MismatchError(
                f"cannot append to table {name!r}: column {col!r} is {typ} there but {got} in the new rows; "
                "convert the column (or write with mode='replace')"
            )
        arrays.append(
            table.column(col).cast(arrow_type(typ), safe=False) if got != typ else table.column(col)
        )
    import pyarrow as pa

    return pa.Table.from_arrays(arrays, names=[c for c, _ in stored])


# ---------------------------------------------------------------------------------------------- store ops
def _info(row: Any) -> TableInfo:
    return TableInfo(
        name=row.name, n_rows=int(row.n_rows), columns=dict((c, t) for c, t in json.loads(row.column_types)),
        description=row.description, produced_by=row.produced_by, nbytes=int(row.nbytes),
        n_files=len(json.loads(row.files)), created_at=row.created_at, updated_at=row.updated_at,
    )  # fmt: skip


def _check_model_ids(b: Backend, conn: Connection, table: pa.Table) -> None:
    if "model_id" not in table.column_names or table.num_rows == 0:
        return
    ids = sorted({int(x) for x in table.column("model_id").to_numpy()})
    missing: list[int] = []
    for chunk in chunks(ids):
        found = set(conn.execute(select(S.Model.id).where(S.Model.id.in_(chunk))).scalars())
        missing += [i for i in chunk if i not in found]
    if missing:
        raise NotFoundError(
            f"column 'model_id' names {len(missing)} model(s) not in the zoo at {b.root}: {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}; write rows for stored models only (find ids with `weightzoo ls`)"
        )


def write_table(
    b: Backend,
    name: str,
    frame: pd.DataFrame,
    *,
    mode: str = "replace",
    description: str | None = None,
    produced_by: int | str | None = None,
) -> TableInfo:
    """See :meth:`zoo.facade.Zoo.write_table`."""
    from zoo.store.schema import utcnow

    check_table_name(name)
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {list(MODES)}, not {mode!r}")
    if description is not None and not isinstance(description, str):
        raise ConfigError(f"description must be a string, not {type(description).__name__}")
    if isinstance(produced_by, bool) or not isinstance(produced_by, numbers.Integral | str | None):
        raise ConfigError(f"produced_by must be a model id or name, not {produced_by!r}")
    if isinstance(produced_by, numbers.Integral):
        produced_by = int(produced_by)  # numpy ids too
    table, types = frame_to_arrow(frame)  # the CPU work, before the write lock
    written: list[str] = []
    old_files: list[str] = []
    try:
        with b.engine.begin() as conn:
            b.catalog.bump(conn)
            producer = b.catalog.model_id(conn, produced_by) if produced_by is not None else None
            _check_model_ids(b, conn, table)
            row = conn.execute(select(S.DerivedTable).where(S.DerivedTable.name == name)).first()
            if row is not None and mode == "append":
                stored = json.loads(row.column_types)
                table = _conform(table, types, stored, name)
                types = stored
            file, nbytes = b.table_files.write(name, table)
            written.append(file)
            now = utcnow()
            if row is None:
                conn.execute(
                    insert(S.DerivedTable).values(
                        name=name, files=json.dumps([file]), column_types=json.dumps(types), n_rows=table.num_rows,
                        nbytes=nbytes, description=description or "", produced_by=producer, created_at=now, updated_at=now,
                    )
                )  # fmt: skip
            else:
                keep = mode == "append"
                files = [*json.loads(row.files), file] if keep else [file]
                b.catalog.note_rewrite(conn)
                conn.execute(
                    update(S.DerivedTable).where(S.DerivedTable.id == row.id).values(
                        files=json.dumps(files), column_types=json.dumps(types),
                        n_rows=(int(row.n_rows) if keep else 0) + table.num_rows,
                        nbytes=(int(row.nbytes) if keep else 0) + nbytes,
                        description=row.description if description is None else description,
                        produced_by=row.produced_by if producer is None else producer, updated_at=now,
                    )
                )  # fmt: skip
                if not keep:
                    old_files = json.loads(row.files)
    except BaseException:
        for f in written:
            b.table_files.delete(f)
        raise
    for f in old_files:  # after the commit; a reader holding an older snapshot re-reads the catalog
        b.table_files.delete(f)
    return table_info(b, name)


def table_info(b: Backend, name: str) -> TableInfo:
    with b.engine.connect() as c:
        row = c.execute(select(S.DerivedTable).where(S.DerivedTable.name == name)).first()
    if row is None:
        raise NotFoundError(_not_found(b, name))
    return _info(row)


def list_tables(b: Backend) -> list[TableInfo]:
    with b.engine.connect() as c:
        rows = c.execute(select(S.DerivedTable).order_by(S.DerivedTable.name)).all()
    return [_info(r) for r in rows]


def _not_found(b: Backend, name: object) -> str:
    with b.engine.connect() as c:
        names = sorted(c.execute(select(S.DerivedTable.name)).scalars())
    have = (
        f"the zoo has: {', '.join(names[:20])}"
        if names
        else "the zoo has none yet (write one with Zoo.write_table)"
    )
    return f"no derived table {name!r}; {have}. List them with `weightzoo tables`"


def read_table(b: Backend, name: str) -> pa.Table:
    """The rows of a derived table as Arrow (a consistent version even while a writer replaces it)."""
    if not isinstance(name, str):
        raise ConfigError(f"table name must be a string, not {type(name).__name__}")
    for _ in range(5):
        with b.engine.connect() as c:
            row = c.execute(
                select(S.DerivedTable.files, S.DerivedTable.column_types).where(S.DerivedTable.name == name)
            ).first()
        if row is None:
            raise NotFoundError(_not_found(b, name))
        try:
            return b.table_files.read(json.loads(row.files), table_schema(json.loads(row.column_types)))
        except FileNotFoundError:  # replaced or dropped since we read the catalog: read it again
            continue
    raise IntegrityError(f"a file of derived table {name!r} is missing; run `weightzoo verify`")


def drop_table(b: Backend, name: str) -> None:
    """Delete a derived table: its catalog row, then (after the commit) its files."""
    if not isinstance(name, str):
        raise ConfigError(f"table name must be a string, not {type(name).__name__}")
    with b.engine.begin() as conn:
        b.catalog.bump(conn)
        row = conn.execute(
            select(S.DerivedTable.id, S.DerivedTable.files).where(S.DerivedTable.name == name)
        ).first()
        if row is None:
            raise NotFoundError(_not_found(b, name))
        b.catalog.note_rewrite(conn)
        conn.execute(delete(S.DerivedTable).where(S.DerivedTable.id == row.id))
    for f in json.loads(row.files):
        b.table_files.delete(f)
