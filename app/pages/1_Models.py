"""Models: a filterable, sortable table of every model; read-only SQL; CSV/Parquet download."""

import io

import pandas as pd
import streamlit as st

from app import common as C
from zoo import QueryError

z = C.page("Models")
if z is None:
    st.stop()

df = C.models_table()
metrics = C.metric_columns(df)
hps = [c for c in df.columns if c.startswith("hp_")]

tab_table, tab_sql = st.tabs(["Table", "SQL"])

# ------------------------------------------------------------------------------------ table
with tab_table:
    with st.expander("Filters", expanded=True):
        c1, c2, c3, c4 = st.columns(4)
        pops = c1.multiselect("population", sorted(df["population"].dropna().unique()), key="m_pop")
        archs = c2.multiselect("architecture", sorted(df["architecture"].dropna().unique()), key="m_arch")
        ops = c3.multiselect("made by (op)", sorted(df["op"].dropna().unique()), key="m_op")
        all_tags = sorted({t for ts in df["tags"] for t in ts.split(", ") if t})
        tags = c4.multiselect("tags (all of)", all_tags, key="m_tags")
        c1, c2, c3, c4 = st.columns(4)
        text = c1.text_input("name contains", key="m_text")
        final = c2.checkbox("final checkpoints only", key="m_final", help="the last checkpoint of each training run")
        mfilter = c3.selectbox("metric filter", ["(none)", *metrics], key="m_metric")
        rng = None
        if mfilter != "(none)":
            vals = df[mfilter].dropna()
            lo, hi = (float(vals.min()), float(vals.max())) if len(vals) else (0.0, 1.0)
            if hi > lo:
                rng = c4.slider(f"{mfilter} range", lo, hi, (lo, hi), key="m_range")
            else:
                c4.caption(f"every model has {mfilter} = {lo:g}")
    view = df
    if pops:
        view = view[view["population"].isin(pops)]
    if archs:
        view = view[view["architecture"].isin(archs)]
    if ops:
        view = view[view["op"].isin(ops)]
    for t in tags:
        view = view[view["tags"].str.split(", ").map(lambda ts, t=t: t in ts)]
    if text:
        view = view[view["name"].fillna("").str.contains(text, case=False, regex=False)]
    if final:
        view = C.final_only(view)
    if rng is not None:
        view = view[view[mfilter].between(*rng)]

    c1, c2, c3 = st.columns([2, 1, 1])
    sortable = ["id", "name", "population", "step", "created_at", *metrics, *hps]
    sort_col = c1.selectbox("sort by", sortable, index=0, key="m_sort")
    desc = c2.toggle("descending", value=False, key="m_desc")
    limit = int(c3.number_input("rows shown", min_value=10, max_value=100_000, value=2000, step=500, key="m_limit"))
    view = view.sort_values(sort_col, ascending=not desc, na_position="last", kind="stable")
    st.caption(f"**{len(view):,}** of {len(df):,} models" + (f" (showing the first {limit:,})" if len(view) > limit else "")
               + ". Click a row to select it; click a column header to sort what is shown.")  # fmt: skip
    shown = view.head(limit)
    event = st.dataframe(
        shown, hide_index=True, width="stretch", height=420, key="m_table", on_select="rerun", selection_mode="single-row",
        column_config={"id": st.column_config.NumberColumn(format="%d"), "created_at": st.column_config.TextColumn()},
    )  # fmt: skip
    rows = event.selection.rows if event is not None and hasattr(event, "selection") else []
    c1, c2, c3 = st.columns([2, 1, 1])
    if rows:
        mid = int(shown.iloc[rows[0]]["id"])
        st.session_state["model_id"] = mid
        if c1.button(f"Open model {mid} ({shown.iloc[rows[0]]['name'] or 'unnamed'})", type="primary", key="m_open"):
            C.open_model(mid)
    else:
        c1.caption("Select a row to open the model's detail page.")
    c2.download_button("Download CSV", data=lambda: view.to_csv(index=False), file_name="models.csv", mime="text/csv", key="m_csv")

    def _parquet() -> bytes:
        buf = io.BytesIO()
        view.to_parquet(buf, index=False)
        return buf.getvalue()

    c3.download_button("Download Parquet", data=_parquet, file_name="models.parquet", mime="application/octet-stream", key="m_parquet")

# ------------------------------------------------------------------------------------ SQL
EXAMPLE = """select p.name as population, count(*) as models, avg(x.value) as mean_test_acc
from models m join populations p on p.id = m.population_id
left join metrics x on x.model_id = m.id and x.name = 'acc' and x.split = 'test'
group by 1 order by models desc"""

with tab_sql:
    st.caption(
        "One read-only SELECT (DuckDB) over the live catalog. Tables: `models`, `populations`, `architectures`, "
        "`metrics` (model_id, name, split, step, value), `hyperparameters` (model_id, name, value, value_num, value_text), "
        "`lineage` (child_id, parent_id, role, op, params), `tags`, `tensors`, `blobs`, `packs`; views "
        "`model_overview`, `metrics_wide`, `hparams_wide`."
    )
    with st.form("sql_form"):
        query = st.text_area("SQL", value=st.session_state.get("sql_last", EXAMPLE), height=140, key="sql_text")
        run = st.form_submit_button("Run query", type="primary")
    if run:
        st.session_state["sql_last"] = query
    q = st.session_state.get("sql_last")
    if q:
        try:
            res = C.user_sql(q)
        except QueryError as e:
            st.error(str(e))
        else:
            st.caption(f"{len(res):,} rows")
            st.dataframe(res, hide_index=True, width="stretch", key="sql_result")
            st.download_button("Download result (CSV)", data=lambda: res.to_csv(index=False), file_name="query.csv",
                               mime="text/csv", key="sql_csv")  # fmt: skip
            if "id" in res.columns and pd.api.types.is_integer_dtype(res["id"]) and len(res):
                pick = st.selectbox("open a model of the result", res["id"].tolist()[:5000], key="sql_pick")
                if st.button(f"Open model {pick}", key="sql_open"):
                    C.open_model(int(pick))
