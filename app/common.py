"""Shared plumbing of the explorer's pages: which zoo, the cached zoo handle, cached queries, guards.

Every page starts with :func:`page` (title, sidebar, the zoo) and reads the store only through the
public ``zoo`` API. Query results are cached with ``st.cache_data`` keyed on the zoo's root and its
:meth:`zoo.Zoo.generation` counter, so a write by anyone (this app, the CLI, another user) shows up
on the next rerun, and a page that has already run is served from the cache.

The zoo root comes from ``--root`` after ``--`` on the ``streamlit run`` command line
(``weightzoo app --root DIR`` passes it), else ``$WEIGHTZOO_HOME``, else ``~/.weightzoo``.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import streamlit as st
from streamlit.errors import StreamlitAPIException

from zoo import Zoo, ZooError
from zoo.settings import default_root

#: The page files (relative to app/Home.py), for links between pages.
PAGES = {
    "overview": "Home.py",
    "models": "pages/1_Models.py",
    "detail": "pages/2_Model_detail.py",
    "map": "pages/3_Population_map.py",
    "merge": "pages/4_Align_and_merge.py",
    "generate": "pages/5_Generate.py",
    "diffs": "pages/6_Diffs.py",
    "signatures": "pages/7_Signatures.py",
    "landscape": "pages/8_Landscape.py",
    "storage": "pages/9_Storage.py",
}


# ------------------------------------------------------------------------------------ which zoo
def _argv_option(argv: Sequence[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def zoo_location(argv: Sequence[str] | None = None) -> tuple[str, str | None]:
    """``(root, url)``: ``--root``/``--url`` after ``--`` in argv, else ``$WEIGHTZOO_HOME`` / default."""
    argv = list(sys.argv[1:] if argv is None else argv)
    root = _argv_option(argv, "--root") or str(default_root())
    url = _argv_option(argv, "--url") or os.environ.get("WEIGHTZOO_URL") or None
    return os.path.abspath(os.path.expanduser(root)), url


@st.cache_resource(show_spinner=False)
def _open(root: str, url: str | None) -> Zoo:
    return Zoo.open(root, url=url, create=False)


@st.cache_resource(show_spinner=False)
def _lock(root: str, url: str | None) -> threading.Lock:
    return threading.Lock()


def zoo() -> Zoo:
    """The zoo handle of this app (one per root, shared by every session)."""
    return _open(*zoo_location())


@contextmanager
def reading() -> Iterator[None]:
    """Serialise tensor reads on the shared handle (its blob-location cache is not thread-safe)."""
    with _lock(*zoo_location()):
        yield


def generation() -> int:
    return zoo().generation()


# ------------------------------------------------------------------------------------ page frame
def page(title: str, *, icon: str = ":material/pets:", need_models: bool = True) -> Zoo | None:
    """Set up a page: config, sidebar (zoo location), title. Returns the zoo, or None after showing
    a friendly message when there is no zoo (or, with ``need_models``, no model in it)."""
    st.set_page_config(page_title=f"{title} · weightzoo", page_icon=icon, layout="wide")
    root, url = zoo_location()
    st.title(title)
    with st.sidebar:
        st.caption(f"zoo: `{root}`" + (f"  \ncatalog: `{_redact(url)}`" if url else ""))
    try:
        z = zoo()
    except ZooError as e:
        st.info(
            f"There is no zoo at `{root}` yet ({e}).\n\nBuild the demo zoo there with\n\n"
            f"```\nweightzoo demo --quick --root {root}\n```\n\n(or `weightzoo demo` for the full one), "
            "then reload this page."
        )
        return None
    if need_models and summary()["models"] == 0:
        empty_message(root)
        return None
    return z


def empty_message(root: str) -> None:
    st.info(
        f"The zoo at `{root}` is empty: no models yet.\n\nBuild the demo zoo with\n\n"
        f"```\nweightzoo demo --quick --root {root}\n```\n\n"
        "(`weightzoo demo` for the full one, `weightzoo build RECIPE` or `weightzoo ingest PATH` for your own), "
        "then reload this page."
    )


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


@contextmanager
def shown_errors(what: str = "") -> Iterator[None]:
    """Show a :class:`ZooError` (bad input) as a plain error box instead of a traceback."""
    try:
        yield
    except ZooError as e:
        st.error(f"{what}{': ' if what else ''}{e}")


def fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


# ------------------------------------------------------------------------------------ cached queries
# Every cached function takes the zoo location and the generation: a write invalidates it.
def summary() -> dict[str, Any]:
    return _summary(*zoo_location(), generation())


@st.cache_data(show_spinner=False, max_entries=16)
def _summary(root: str, url: str | None, gen: int) -> dict[str, Any]:
    return _open(root, url).summary()


def sql(query: str) -> pd.DataFrame:
    """``Zoo.sql`` cached on the generation (raises :class:`zoo.QueryError` on bad SQL)."""
    return _sql(*zoo_location(), generation(), query)


@st.cache_data(show_spinner=False, max_entries=64)
def _sql(root: str, url: str | None, gen: int, query: str) -> pd.DataFrame:
    return _open(root, url).sql(query)


#: Limits of the SQL box (stricter than the CLI's: the app is shared by every session, and its
#: queries run one at a time on one connection). Override before `weightzoo app` with these variables.
APP_SQL_MEMORY_ENV, APP_SQL_TIMEOUT_ENV = "WEIGHTZOO_APP_SQL_MEMORY", "WEIGHTZOO_APP_SQL_TIMEOUT"
APP_SQL_MEMORY, APP_SQL_TIMEOUT = "1GB", 15.0


def app_sql_limits() -> tuple[str, str | float]:
    return (os.environ.get(APP_SQL_MEMORY_ENV) or APP_SQL_MEMORY, os.environ.get(APP_SQL_TIMEOUT_ENV) or APP_SQL_TIMEOUT)


def user_sql(query: str) -> pd.DataFrame:
    """The SQL box: ``Zoo.sql`` under the app's limits (1 GB, 15 s unless the environment says otherwise).

    A query stopped by a limit raises a QueryError whose message says how to raise it for the app."""
    from zoo.query.analytics import QueryLimitError

    memory, timeout = app_sql_limits()
    try:
        return _user_sql(*zoo_location(), generation(), query, str(memory), str(timeout))
    except QueryLimitError as e:
        env = APP_SQL_MEMORY_ENV if e.limit == "memory" else APP_SQL_TIMEOUT_ENV
        raise QueryLimitError(
            f"{e}. In the explorer the limits are {memory} and {timeout} s: set {env} before `weightzoo app` to "
            "change them", e.limit,
        ) from None  # fmt: skip


@st.cache_data(show_spinner=False, max_entries=64)
def _user_sql(root: str, url: str | None, gen: int, query: str, memory: str, timeout: str) -> pd.DataFrame:
    return _open(root, url).sql(query, memory_limit=memory, timeout=timeout)


def populations() -> pd.DataFrame:
    """One row per population: name, architecture, family, models, logical and stored bytes, dedup."""
    return _populations(*zoo_location(), generation())


@st.cache_data(show_spinner=False, max_entries=16)
def _populations(root: str, url: str | None, gen: int) -> pd.DataFrame:
    z = _open(root, url)
    pops = pd.DataFrame([p.__dict__ for p in z.populations()], columns=["id", "name", "architecture", "description", "n_models"])
    sizes = z.sql("""
        with pb as (select distinct m.population_id, t.blob_id from tensors t join models m on m.id = t.model_id)
        select p.id, coalesce(l.logical, 0) as logical_bytes, coalesce(s.stored, 0) as stored_bytes,
               coalesce(l.params, 0) as n_params, a.family
        from populations p
        left join architectures a on a.id = p.architecture_id
        left join (select population_id, sum(nbytes) as logical, max(n_params) as params from models group by 1) l
               on l.population_id = p.id
        left join (select pb.population_id, sum(b.nbytes) as stored from pb join blobs b on b.id = pb.blob_id group by 1) s
               on s.population_id = p.id
    """)  # fmt: skip
    out = pops.merge(sizes, on="id", how="left")
    out["dedup_ratio"] = (out["logical_bytes"] / out["stored_bytes"].where(out["stored_bytes"] > 0)).fillna(1.0)
    return out


def models_table() -> pd.DataFrame:
    """Every model, one row each: id, name, population, architecture, run, step, op, created_at,
    n_params, tags, metrics (``<split>_<name>``, latest step) and hyperparameters (``hp_<name>``)."""
    return _models_table(*zoo_location(), generation())


@st.cache_data(show_spinner=False, max_entries=4)
def _models_table(root: str, url: str | None, gen: int) -> pd.DataFrame:
    z = _open(root, url)
    df = z.models().df()
    if df.empty:
        return df
    tags = z.sql("select model_id as id, string_agg(tag, ', ' order by tag) as tags from tags group by 1")
    df = df.merge(tags, on="id", how="left")
    df["tags"] = df["tags"].fillna("")
    df = df.drop(columns=[c for c in ("source", "nbytes") if c in df.columns])
    front = ["id", "name", "population", "architecture", "run", "step", "op", "tags", "n_params", "created_at"]
    front = [c for c in front if c in df.columns]
    metrics = sorted(c for c in df.columns if c not in front and not c.startswith("hp_"))
    hps = sorted(c for c in df.columns if c.startswith("hp_"))
    df = df[front + metrics + hps]
    for c in hps:  # JSON values: keep numbers numeric, make mixed/list columns text (Arrow needs one type)
        col = df[c]
        if col.map(lambda v: isinstance(v, list | dict)).any() or _mixed(col):
            df[c] = col.map(lambda v: None if v is None or (isinstance(v, float) and v != v) else str(v))
    return df


def _mixed(col: pd.Series) -> bool:
    kinds = {type(v) for v in col.dropna()}
    kinds = {float if k in (int, float, bool) else k for k in kinds}
    return len(kinds) > 1


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The metric columns of :func:`models_table` (everything numeric that is not id/step/n_params/hp)."""
    skip = {"id", "step", "n_params"}
    return [c for c in df.columns if c not in skip and not c.startswith("hp_") and pd.api.types.is_numeric_dtype(df[c])]


def final_only(df: pd.DataFrame) -> pd.DataFrame:
    """Only the last checkpoint of each run (models without a run are kept)."""
    if df.empty or "run" not in df.columns:
        return df
    has_run = df["run"].notna()
    last = df[has_run].groupby("run")["step"].transform("max")
    keep = ~has_run
    keep[has_run] = df.loc[has_run, "step"].fillna(-1).to_numpy() >= last.fillna(-1).to_numpy()
    return df[keep]


def derived_tables() -> pd.DataFrame:
    """The zoo's derived tables (learner outputs): name, rows, columns, description, producer, updated."""
    return _derived(*zoo_location(), generation())


@st.cache_data(show_spinner=False, max_entries=8)
def _derived(root: str, url: str | None, gen: int) -> pd.DataFrame:
    types = derived_column_types()
    rows = [t.to_dict() for t in zoo().tables()]
    cols = ["name", "n_rows", "columns", "description", "produced_by", "updated_at"]
    df = pd.DataFrame(rows, columns=None if rows else cols)
    if rows:
        df = df[cols].assign(columns=df["name"].map(lambda t: ", ".join(f"{k} {v}" for k, v in types[t].items())))
    return df


def derived_column_types() -> dict[str, dict[str, str]]:
    """``{table: {column: SQL type}}`` of the zoo's derived tables."""
    return _derived_types(*zoo_location(), generation())


@st.cache_data(show_spinner=False, max_entries=8)
def _derived_types(root: str, url: str | None, gen: int) -> dict[str, dict[str, str]]:
    return {t.name: dict(t.columns) for t in zoo().tables()}


def lineage_edges() -> pd.DataFrame:
    """All lineage edges: child_id, parent_id, role, op."""
    return _edges(*zoo_location(), generation())


@st.cache_data(show_spinner=False, max_entries=4)
def _edges(root: str, url: str | None, gen: int) -> pd.DataFrame:
    return _open(root, url).sql("select child_id, parent_id, role, op from lineage order by child_id, parent_id")


class Memo:
    """A small thread-safe LRU dict for results too big or too slow for ``st.cache_data``'s pickling
    (and whose computation shows its own progress bar)."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._d: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, key: Any) -> bool:
        with self._lock:
            return key in self._d

    def get(self, key: Any) -> Any:
        with self._lock:
            self._d.move_to_end(key)
            return self._d[key]

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._d[key] = value
            while len(self._d) > self.size:
                self._d.popitem(last=False)


@st.cache_resource(show_spinner=False)
def memo(name: str) -> Memo:
    """The process-wide memo called ``name`` (shared by sessions, like the zoo handle)."""
    return Memo()


# ------------------------------------------------------------------------------------ picking a model
def selected_model_key() -> str | None:
    """The model the user is looking at: ``?model=`` in the URL, else the session's last pick."""
    q = st.query_params.get("model")
    if q:
        return str(q)
    v = st.session_state.get("model_id")
    return None if v is None else str(v)


def open_model(model_id: int, page_key: str = "detail") -> None:
    """Remember ``model_id`` and go to a page showing it (the model detail page by default)."""
    st.session_state["model_id"] = int(model_id)
    try:
        st.switch_page(PAGES[page_key], query_params={"model": str(int(model_id))})
    except StreamlitAPIException:  # a page run on its own (tests): stay, with the pick remembered
        st.query_params["model"] = str(int(model_id))
        st.rerun()


def model_link(model_id: int, label: str | None = None, page_key: str = "detail") -> None:
    """A link to a page about ``model_id`` (falls back to a plain caption when pages are not registered)."""
    try:
        st.page_link(PAGES[page_key], label=label or f"Open model {model_id}", icon=":material/open_in_new:",
                     query_params={"model": str(int(model_id))})  # fmt: skip
    except StreamlitAPIException:
        st.caption(f"{label or 'model'}: `?model={int(model_id)}` on the {page_key} page")


def model_labels() -> dict[int, str]:
    """``id -> "id · name · test_acc"`` for every model (for pickers; cached on the generation)."""
    return _labels(*zoo_location(), generation())


@st.cache_data(show_spinner=False, max_entries=4)
def _labels(root: str, url: str | None, gen: int) -> dict[int, str]:
    df = _models_table(root, url, gen)
    if df.empty:
        return {}
    names = df["name"].fillna("(unnamed)").astype(str)
    acc = df["test_acc"].map(lambda v: f" · test_acc {v:.3f}" if pd.notna(v) else "") if "test_acc" in df.columns else ""
    return dict(zip(df["id"].astype(int), df["id"].astype(str) + " · " + names + acc, strict=True))


def labeller() -> Any:
    """A ``format_func`` for model pickers (reads the labels once)."""
    labels = model_labels()
    return lambda i: "(none)" if i is None else labels.get(int(i), str(i))
