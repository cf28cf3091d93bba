"""Storage: where this zoo's catalog, packs and table files live (a local folder or a bucket), what is
on them, and a quick integrity check (docs/scale-out.md).

Listing a bucket is a request per page of 1,000 objects, so the listing is cached per catalog generation;
"Check now" runs ``verify`` without re-hashing (presence, offsets, orphans).
"""

import pandas as pd
import streamlit as st

from app import common as C

z = C.page("Storage")
if z is None:
    st.stop()


@st.cache_data(show_spinner="listing the pack store ...", max_entries=8)
def _listing(root: str, gen: int) -> pd.DataFrame:
    with C.reading():
        info = z.packs.list_info()
        known = set(C.sql("select id from packs")["id"])
    return pd.DataFrame(
        [{"pack": p, "bytes": i.size, "in catalog": p in known, "modified": pd.Timestamp(i.mtime, unit="s")}
         for p, i in sorted(info.items())],
        columns=["pack", "bytes", "in catalog", "modified"],
    )  # fmt: skip


remote = hasattr(z.packs, "fs")
cache = getattr(z.packs, "cache", None)
st.caption("Packs in " + ("an object store (one PUT per pack, ranged reads)" if remote else "a local folder (memory-mapped)"))
c1, c2 = st.columns(2)
c1.markdown(f"**catalog**  \n`{z.engine.url.render_as_string(hide_password=True)}`")
c1.markdown(f"**packs**  \n`{z.packs.location}`")
c2.markdown(f"**table files**  \n`{getattr(z.table_files, 'url', z.table_files.dir)}`")
c2.markdown(f"**read cache**  \n`{cache}`" if cache is not None else "**read cache**  \nnone" + (
    " (every read is a ranged read; `--packs-cache DIR` adds one)" if remote else " (not needed: local packs)"))

with C.shown_errors("cannot list the pack store"):
    df = _listing(str(z.root), C.generation())
    s = C.summary()
    m = st.columns(4)
    m[0].metric("packs (catalog)", f"{s['packs']:,}")
    m[1].metric("pack files", f"{len(df):,}")
    m[2].metric("on storage", C.fmt_bytes(float(df["bytes"].sum()) if len(df) else 0.0))
    m[3].metric("orphan files", f"{int((~df['in catalog']).sum()) if len(df) else 0:,}")
    st.dataframe(df.tail(200), hide_index=True, width="stretch")
    if len(df) > 200:
        st.caption(f"the 200 newest of {len(df):,} pack files")

if st.button("Check now (verify without re-hashing)"):
    with C.shown_errors("verify failed"), st.spinner("verifying ..."), C.reading():
        rep = z.verify(rehash=False)
        (st.success if rep.ok else st.error)(str(rep).splitlines()[0])
        if rep.orphan_packs:
            st.info(f"{len(rep.orphan_packs)} orphan pack(s): written by a writer that did not commit; "
                    "`weightzoo gc` removes them once older than its grace period")  # fmt: skip
        if rep.affected_models:
            st.warning(f"affected models: {rep.affected_models[:50]}")

st.markdown("A shared zoo on PostgreSQL and a bucket, builds on Ray: see `docs/scale-out.md` "
            "(`weightzoo build RECIPE --workers N --ray [ADDRESS]`).")  # fmt: skip
