"""The Streamlit explorer, page by page, under ``streamlit.testing.v1.AppTest`` on a small zoo.

Every page is run on a zoo built here (6 MLP checkpoints of 3 runs, a hand-made child with a
lineage edge, one model of another architecture) and on an empty zoo; assertions are on what the
page shows and on what it writes (tags, merges, exports) through the public zoo API.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import REPO_ROOT
from zoo import Zoo

pytest.importorskip("streamlit", reason="the explorer needs Streamlit: pip install 'weightzoo[app]'")
pytest.importorskip("plotly", reason="the explorer needs plotly: pip install 'weightzoo[app]'")

from streamlit.testing.v1 import AppTest  # noqa: E402

APP = REPO_ROOT / "app"
HOME = APP / "Home.py"
MODELS = APP / "pages" / "1_Models.py"
DETAIL = APP / "pages" / "2_Model_detail.py"
MAP = APP / "pages" / "3_Population_map.py"
MERGE = APP / "pages" / "4_Align_and_merge.py"
GENERATE = APP / "pages" / "5_Generate.py"
DIFFS = APP / "pages" / "6_Diffs.py"
ALL_PAGES = [HOME, *sorted((APP / "pages").glob("*.py"))]  # every page, new ones included
TIMEOUT = 120


@pytest.fixture(scope="module")
def app_zoo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """6 checkpoints (3 runs x epochs 1, 3) of a tiny digits MLP, a perturbed child of one final
    checkpoint (evaluated, tagged), and one model of another architecture in its own population."""
    from zoo.build.builder import build
    from zoo.build.recipes import Recipe

    root = tmp_path_factory.mktemp("app") / "zoo"
    with Zoo.open(root) as z:
        build(z, Recipe.from_dict({
            "name": "t-mlp", "arch": {"family": "mlp", "in_features": 64, "hidden": [16], "out_features": 10},
            "epochs": 3, "checkpoint_epochs": [1, 3], "search": {"mode": "grid", "seeds": 3, "params": {"lr": [3e-3]}},
        }), progress=False)  # fmt: skip
        finals = z.population("t-mlp").final().ids()
        parent = z.get(finals[0])
        g = torch.Generator().manual_seed(0)
        child = z.add({k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in parent.state_dict().items()},
                      arch=parent.arch_config, population="t-children", name="t-child", parents=[parent.id],
                      op="perturb", params={"sigma": 0.01}, tags=["handmade"])  # fmt: skip
        z.evaluate([child.id])
        wide_cfg = {"family": "mlp", "in_features": 64, "hidden": [8], "out_features": 10}
        from zoo.models.architectures import init_state

        other = z.add(init_state(wide_cfg, 0), arch=wide_cfg, population="t-narrow", name="t-narrow-0")
        return {"root": root, "parent": parent.id, "child": child.id, "finals": finals, "other": other.id,
                "n_models": 8, "n_populations": 3}  # fmt: skip


@pytest.fixture
def writable_zoo(app_zoo: dict, tmp_path: Path) -> dict:
    """A private copy of the app zoo, for tests that write."""
    root = tmp_path / "zoo"
    shutil.copytree(app_zoo["root"], root)
    return dict(app_zoo, root=root)


@pytest.fixture
def page(monkeypatch: pytest.MonkeyPatch) -> Callable[..., AppTest]:
    """``page(path, root, **query) -> AppTest`` already run once, the zoo root given as $WEIGHTZOO_HOME."""

    def run(path: Path, root: Path, **query: object) -> AppTest:
        monkeypatch.setenv("WEIGHTZOO_HOME", str(root))
        monkeypatch.delenv("WEIGHTZOO_URL", raising=False)
        at = AppTest.from_file(str(path), default_timeout=TIMEOUT)
        for k, v in query.items():
            at.query_params[k] = str(v)
        at.run()
        assert_clean(at)
        return at

    return run


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def texts(at: AppTest) -> str:
    """Everything the page wrote as text (markdown, captions, titles, alerts, metrics)."""
    parts = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "error", "warning", "success", "code"):
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    return "\n".join(parts)


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def zoo_state(root: Path) -> tuple[int, int]:
    with Zoo.open(root, create=False) as z:
        return z.generation(), z.models().count()


# ------------------------------------------------------------------------------------ every page
@pytest.mark.parametrize("path", ALL_PAGES, ids=[p.stem for p in ALL_PAGES])
def test_every_page_runs_without_exception(page, app_zoo: dict, path: Path) -> None:
    at = page(path, app_zoo["root"], model=app_zoo["child"])
    assert at.title, "every page has a title"
    assert not at.error, [e.value for e in at.error]


@pytest.mark.parametrize("path", ALL_PAGES, ids=[p.stem for p in ALL_PAGES])
def test_empty_zoo_shows_how_to_build_one(page, tmp_path: Path, path: Path) -> None:
    Zoo.open(tmp_path / "empty").close()
    at = page(path, tmp_path / "empty")
    shown = texts(at)
    assert "empty" in shown and "weightzoo demo" in shown, shown
    assert not at.error and not at.dataframe


def test_missing_zoo_is_a_friendly_message_and_creates_nothing(page, tmp_path: Path) -> None:
    at = page(HOME, tmp_path / "nowhere")
    assert "no zoo" in texts(at).lower() and "weightzoo demo" in texts(at)
    assert not (tmp_path / "nowhere").exists()


def test_root_comes_from_argv_then_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from app.common import zoo_location

    monkeypatch.setenv("WEIGHTZOO_HOME", str(tmp_path / "env"))
    assert zoo_location(["--root", str(tmp_path / "argv")])[0] == str(tmp_path / "argv")
    assert zoo_location([f"--root={tmp_path / 'eq'}", "--url", "sqlite:///x.db"]) == (str(tmp_path / "eq"), "sqlite:///x.db")
    assert zoo_location([])[0] == str(tmp_path / "env")


# ------------------------------------------------------------------------------------ overview
def test_overview_lists_populations_with_counts(page, app_zoo: dict) -> None:
    at = page(HOME, app_zoo["root"])
    assert metric(at, "models") == str(app_zoo["n_models"])
    assert metric(at, "populations") == str(app_zoo["n_populations"])
    pops = at.dataframe[0].value
    assert dict(zip(pops["population"], pops["models"], strict=True)) == {"t-mlp": 6, "t-children": 1, "t-narrow": 1}
    assert {"architecture", "dedup ratio", "stored (unique tensors)"} <= set(pops.columns)
    assert at.selectbox(key="ov_metric").value == "test_acc"
    assert at.get("plotly_chart"), "the metric histogram is drawn"
    recent = next(d.value for d in at.dataframe if "parents" in d.value.columns)
    assert recent.iloc[0]["id"] == app_zoo["other"]  # newest first
    assert str(app_zoo["parent"]) in set(recent["parents"])


def test_overview_lists_derived_tables_with_a_preview(page, writable_zoo: dict) -> None:
    import pandas as pd

    at = page(HOME, writable_zoo["root"])
    assert any("No derived tables yet" in c.value for c in at.caption)
    with Zoo.open(writable_zoo["root"]) as z:
        ids = z.population("t-mlp").ids()
        z.write_table("acc_pred", pd.DataFrame({"model_id": ids, "prediction": [0.5 + i / 100 for i in range(len(ids))]}),
                      description="encoder outputs")  # fmt: skip
    at = page(HOME, writable_zoo["root"])
    tables = next(d.value for d in at.dataframe if "n_rows" in d.value.columns)
    assert tables.iloc[0]["name"] == "acc_pred" and tables.iloc[0]["n_rows"] == len(ids)
    assert "prediction DOUBLE" in tables.iloc[0]["columns"]
    assert at.selectbox(key="ov_table").value == "acc_pred"
    rows = next(d.value for d in at.dataframe if "prediction" in d.value.columns)
    assert sorted(rows["model_id"]) == sorted(ids)


# ------------------------------------------------------------------------------------ models
def test_models_table_filters(page, app_zoo: dict) -> None:
    at = page(MODELS, app_zoo["root"])
    table = at.dataframe[0].value
    assert len(table) == app_zoo["n_models"]
    assert {"id", "population", "op", "tags", "test_acc", "hp_lr"} <= set(table.columns)
    assert table.loc[table["id"] == app_zoo["child"], "tags"].item() == "handmade"
    at.checkbox(key="m_final").check().run()
    assert len(at.dataframe[0].value) == 5  # 3 final checkpoints + the child + the narrow model
    at.multiselect(key="m_pop").select("t-mlp").run()
    assert sorted(at.dataframe[0].value["id"]) == sorted(app_zoo["finals"])
    at.selectbox(key="m_sort").select("test_acc").run()
    at.toggle(key="m_desc").set_value(True).run()
    shown = at.dataframe[0].value["test_acc"].tolist()
    assert shown == sorted(shown, reverse=True)
    assert {b.label for b in at.get("download_button")} >= {"Download CSV", "Download Parquet"} or len(at.get("download_button")) == 2


def test_sql_box_runs_queries_and_reports_errors_plainly(page, app_zoo: dict) -> None:
    before = zoo_state(app_zoo["root"])
    at = page(MODELS, app_zoo["root"])
    at.text_area(key="sql_text").input("select id, name from models where op = 'perturb'")
    button(at, "Run query").click().run()
    assert_clean(at)
    res = next(d.value for d in at.dataframe if list(d.value.columns) == ["id", "name"])
    assert res["id"].tolist() == [app_zoo["child"]]
    for bad in ("drop table models", "select * from no_such_table", "select 1; select 2"):
        at.text_area(key="sql_text").input(bad)
        button(at, "Run query").click().run()
        assert_clean(at)
        assert at.error, bad
        assert "Traceback" not in at.error[0].value
    assert zoo_state(app_zoo["root"]) == before


# ------------------------------------------------------------------------------------ detail
def test_detail_shows_layers_metrics_and_lineage(page, app_zoo: dict) -> None:
    at = page(DETAIL, app_zoo["root"], model=app_zoo["child"])
    assert metric(at, "id") == str(app_zoo["child"]) and metric(at, "made by") == "perturb"
    layers = at.dataframe[0].value
    assert list(layers["tensor"]) == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]
    w0 = layers.iloc[0]
    assert w0["shape"] == "16×64" and 1 <= w0["effective_rank"] <= 16 and w0["l2"] > 0
    assert pd.isna(layers.iloc[1]["effective_rank"])  # a bias has no spectrum
    frames = [d.value for d in at.dataframe]
    assert any({"name", "split", "value"} <= set(f.columns) and "acc" in set(f["name"]) for f in frames)
    edges = next(f for f in frames if "parent_id" in f.columns)
    rows = edges[["child_id", "parent_id", "op"]].values.tolist()
    assert [app_zoo["child"], app_zoo["parent"], "perturb"] in rows  # its parent ...
    assert [app_zoo["parent"], app_zoo["parent"] - 3, "train"] in rows  # ... and the parent's previous checkpoint
    assert "`handmade`" in texts(at)
    at.text_input(key="d_model").input(str(app_zoo["parent"])).run()  # another model, by id ...
    assert metric(at, "id") == str(app_zoo["parent"]) and str(at.query_params["model"]).strip("[]'") == str(app_zoo["parent"])
    at.text_input(key="d_model").input("t-child").run()  # ... or by name
    assert metric(at, "id") == str(app_zoo["child"])


def test_detail_training_curve_of_a_run(page, app_zoo: dict) -> None:
    at = page(DETAIL, app_zoo["root"], model=app_zoo["finals"][0])
    assert "Training curves" in texts(at) and "2 checkpoints" in texts(at)


def test_detail_similar_models_by_a_stored_encoder(page, writable_zoo: dict) -> None:
    from weightspace.tasks import run_task, store_encoder

    root = writable_zoo["root"]
    with Zoo.open(root) as z:
        target = z.population("t-mlp").final().ids()[0]
    at = page(DETAIL, root, model=target)
    assert any("No encoder trained on population" in i.value for i in at.info)
    with Zoo.open(root) as z:
        enc = store_encoder(z, run_task(z, "np", "accuracy", {"epochs": 1}, population="t-mlp", test_fraction=0.34))
        members = set(z.population("t-mlp").ids())
    at = page(DETAIL, root, model=target)
    assert at.selectbox(key="d_sim_encoder").value == enc.id
    near = next(d.value for d in at.dataframe if "distance" in d.value.columns)
    assert len(near) == 5 and target not in set(near["id"]) and near["distance"].is_monotonic_increasing
    assert set(near["id"]) <= members


def test_detail_unknown_model_is_an_error(page, app_zoo: dict) -> None:
    at = page(DETAIL, app_zoo["root"], model=999999)
    assert at.error and "no model" in at.error[0].value
    assert not at.metric


def test_detail_edits_tags_through_the_zoo(page, writable_zoo: dict) -> None:
    root, mid = writable_zoo["root"], writable_zoo["child"]
    at = page(DETAIL, root, model=mid)
    at.text_input(key="d_new_tags").input("reviewed, keep")
    button(at, "Add").click().run()
    assert_clean(at)
    with Zoo.open(root, create=False) as z:
        assert z.tags(mid) == ["handmade", "keep", "reviewed"]
    assert "`reviewed`" in texts(at)  # the page shows the new tags (cache keyed on the generation)
    at.multiselect(key="d_gone_tags").select("handmade")
    button(at, "Remove").click().run()
    with Zoo.open(root, create=False) as z:
        assert z.tags(mid) == ["keep", "reviewed"]
    before = zoo_state(root)
    at.text_input(key="d_new_tags").input("x" * 300)
    button(at, "Add").click().run()
    assert_clean(at)
    assert at.error and "invalid tag" in at.error[0].value
    assert zoo_state(root)[1] == before[1]
    with Zoo.open(root, create=False) as z:
        assert z.tags(mid) == ["keep", "reviewed"]


def test_detail_exports_an_hf_folder(page, app_zoo: dict, tmp_path: Path) -> None:
    at = page(DETAIL, app_zoo["root"], model=app_zoo["child"])
    out = tmp_path / "export"
    at.text_input(key="d_export_path").input(str(out))
    button(at, "Export").click().run()
    assert_clean(at)
    assert at.success and str(out) in at.success[0].value
    assert (out / "config.json").exists() and list(out.glob("*.safetensors"))
    button(at, "Export").click().run()  # exists: refused without overwrite, plainly
    assert at.error and "export failed" in at.error[0].value


# ------------------------------------------------------------------------------------ map
def test_population_map_pca_and_tsne(page, app_zoo: dict) -> None:
    at = page(MAP, app_zoo["root"])
    assert at.selectbox(key="pm_pop").value == "t-mlp"
    assert "6 of 6 models" in texts(at)
    assert at.get("plotly_chart")
    assert at.selectbox(key="pm_colour").value == "test_acc"
    at.selectbox(key="pm_colour").select("hp_lr").run()
    at.radio(key="pm_method").set_value("t-SNE").run()
    assert_clean(at)
    assert at.get("plotly_chart")
    assert button(at, "Open model")


def test_population_map_aligns_weights_by_default_and_states_explained_variance(page, app_zoo: dict) -> None:
    import re

    at = page(MAP, app_zoo["root"])
    assert at.selectbox(key="pm_source").value == "weights, aligned to a reference"
    caption = next(t for t in texts(at).splitlines() if "models of `t-mlp`" in t)
    ev = [float(x) for x in re.search(r"explain ([\d.]+)% \+ ([\d.]+)% of the variance", caption).groups()]
    assert 0 < ev[1] <= ev[0] <= 100
    before, after = (float(x) for x in re.search(r"distance to the reference from ([\d.e+-]+) to ([\d.e+-]*\d)",
                                                  caption).groups())  # fmt: skip
    assert after < before  # weight matching brought the models closer to the reference
    at.selectbox(key="pm_source").select("weights (raw)").run()
    assert_clean(at)
    raw = next(t for t in texts(at).splitlines() if "models of `t-mlp`" in t)
    assert "explain" in raw and "Alignment" not in raw


def test_population_map_by_stored_embeddings_coloured_by_predictions(page, writable_zoo: dict) -> None:
    import pandas as pd

    at = page(MAP, writable_zoo["root"])
    assert at.selectbox(key="pm_source").options == ["weights, aligned to a reference", "weights (raw)"]
    with Zoo.open(writable_zoo["root"]) as z:
        ids = z.population("t-mlp").ids()[:5]
        g = np.random.default_rng(0)
        z.write_table("enc_out", pd.DataFrame({"model_id": ids, "prediction": g.random(len(ids)),
                                               "embedding": list(g.random((len(ids), 6)).astype("float32")),
                                               "made": pd.Timestamp("2026-01-01", tz="UTC")}))  # fmt: skip
    at = page(MAP, writable_zoo["root"])
    assert at.selectbox(key="pm_source").options == ["weights, aligned to a reference", "weights (raw)",
                                                      "enc_out.embedding"]
    assert {"enc_out.prediction", "enc_out.made"} <= set(at.selectbox(key="pm_colour").options)  # multi-word types
    at.selectbox(key="pm_source").select("enc_out.embedding").run()
    at.selectbox(key="pm_colour").select("enc_out.prediction").run()
    assert_clean(at)
    assert "5 of 6 models" in texts(at)  # only the 5 models that have an embedding are placed
    assert at.get("plotly_chart")


# ------------------------------------------------------------------------------------ align and merge
def test_linear_path_before_and_after_alignment(page, app_zoo: dict) -> None:
    before = zoo_state(app_zoo["root"])
    at = page(MERGE, app_zoo["root"])
    at.button(key="am_lmc").click().run()
    assert_clean(at)
    naive = float(metric(at, "loss barrier, naive"))
    aligned = float(metric(at, "loss barrier, aligned"))
    assert np.isfinite(naive) and np.isfinite(aligned)
    assert len(at.get("plotly_chart")) >= 2
    assert zoo_state(app_zoo["root"]) == before  # computing a path writes nothing


def test_save_aligned_model(page, writable_zoo: dict) -> None:
    root = writable_zoo["root"]
    at = page(MERGE, root)
    a, b = at.selectbox(key="am_a").value, at.selectbox(key="am_b").value
    at.button(key="am_lmc").click().run()
    at.button(key="am_save_aligned").click().run()
    assert_clean(at)
    assert at.success and "stored model" in at.success[0].value
    with Zoo.open(root, create=False) as z:
        new = z.models().op("align.weight_matching").records()
        assert len(new) == 1 and {e.parent for e in z.lineage(new[0].id, max_depth=1)} == {a, b}


def test_merge_saves_to_the_zoo_with_lineage(page, writable_zoo: dict) -> None:
    root = writable_zoo["root"]
    at = page(MERGE, root)
    chosen = at.multiselect(key="am_models_t-mlp").value
    assert len(chosen) == 2
    at.button(key="am_preview").click().run()
    assert_clean(at)
    assert at.success and "merged test accuracy" in at.success[0].value
    assert zoo_state(root)[1] == writable_zoo["n_models"]  # a preview writes nothing
    at.button(key="am_save").click().run()
    assert_clean(at)
    assert at.success and "stored the merge as model" in at.success[-1].value
    with Zoo.open(root, create=False) as z:
        merged = z.models().op("merge.linear").records()
        assert len(merged) == 1 and merged[0].population == "t-mlp/merged"
        assert {e.parent for e in z.lineage(merged[0].id, max_depth=1)} == set(chosen)
        assert merged[0].metric("acc", "test") is not None


def test_incompatible_merge_is_refused_and_changes_nothing(page, writable_zoo: dict) -> None:
    root = writable_zoo["root"]
    at = page(MERGE, root)
    at.text_input(key="am_extra").input(str(writable_zoo["other"])).run()
    before = zoo_state(root)
    at.button(key="am_save").click().run()
    assert_clean(at)
    assert at.error and "nothing was merged" in at.error[0].value
    at.button(key="am_preview").click().run()
    assert at.error and "cannot merge" in at.error[0].value
    assert zoo_state(root)[1] == before[1]
    at.text_input(key="am_extra").input("12345, abc").run()
    assert at.error and "no model(s)" in at.error[0].value


def test_align_and_merge_without_the_learners(page, app_zoo: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    for mod in ("analysis.merging", "analysis.merge", "analysis.align", "analysis.lmc"):
        monkeypatch.setitem(sys.modules, mod, None)  # import raises ImportError
    at = page(MERGE, app_zoo["root"])
    shown = "\n".join(i.value for i in at.info)
    assert "not built yet" in shown and "analysis.merging" in shown and "analysis.lmc" in shown
    assert at.multiselect(key="am_models_t-mlp").value  # the rest of the page still works


# ------------------------------------------------------------------------------------ generate, diffs
def test_generate_without_a_stored_generator_says_how_to_train_one(page, app_zoo: dict) -> None:
    at = page(GENERATE, app_zoo["root"])
    assert "weightzoo generate train" in at.info[0].value  # sampling itself: tests/test_app_generate.py


def test_diffs_against_the_parent(page, app_zoo: dict) -> None:
    at = page(DIFFS, app_zoo["root"], model=app_zoo["child"])
    assert at.selectbox(key="df_child").value == app_zoo["child"]
    assert at.selectbox(key="df_parent").value == app_zoo["parent"]
    d = at.dataframe[0].value
    assert len(d) == 4 and (d["diff_l2"] > 0).all() and (d["relative"] < 0.5).all()
    assert metric(at, "tensors changed") == "4 / 4"
    assert at.get("plotly_chart")
    assert any("No weight-diff interpreter" in i.value for i in at.info)


# ------------------------------------------------------------------------------------ helpers
def test_weight_helpers() -> None:
    from app.weights import diff_norms, effective_rank, embed_2d, layer_table, lineage_layout, singular_values

    assert effective_rank(singular_values(torch.eye(6))) == pytest.approx(6.0)
    assert effective_rank(singular_values(torch.outer(torch.ones(5), torch.arange(1.0, 4.0)))) == pytest.approx(1.0, abs=1e-6)
    sd = {"w": torch.randn(4, 3), "b": torch.zeros(4), "conv": torch.randn(2, 3, 3, 3)}
    tab = layer_table(sd)
    assert list(tab["shape"]) == ["4×3", "4", "2×3×3×3"] and pd.isna(tab.loc[1, "effective_rank"])
    d = diff_norms(sd, sd)
    assert (d["diff_l2"] == 0).all() and np.allclose(d.loc[d["parent_l2"] > 0, "cosine"], 1.0)
    d2 = diff_norms({**sd, "w": torch.randn(5, 3)}, sd)
    assert "shape" in d2.loc[d2["tensor"] == "w", "note"].item()
    xy, info = embed_2d(np.random.default_rng(0).normal(size=(20, 7)), "pca")
    assert xy.shape == (20, 2) and 0 < sum(info["explained_variance"]) <= 1
    edges = pd.DataFrame({"child_id": [2, 3, 4], "parent_id": [1, 2, 2], "op": ["train"] * 3, "role": ["p"] * 3})
    pos = lineage_layout(edges, 2)
    assert pos[1][0] == -1 and pos[2][0] == 0 and pos[3][0] == pos[4][0] == 1 and pos[3][1] != pos[4][1]
