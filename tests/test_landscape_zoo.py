"""Landscape metrics end to end on a tiny zoo: what is written (names, splits, values), refusals that leave
the store unchanged, the report (rank correlations, phase map), the CLI and the explorer page."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from analysis.landscape import landscape, population_spectra
from analysis.landscape.metrics import METRIC_FAMILIES, MetricFamily, register_metric_family, resolve_models
from analysis.landscape.powerlaw import STATUS
from analysis.landscape.report import phase_grid, phase_map, population_table, rank_correlations
from zoo import Zoo
from zoo.cli import main
from zoo.errors import ConfigError, NotFoundError
from zoo.models.architectures import init_state

pytestmark = pytest.mark.usefixtures("one_thread")

SIREN = {"family": "siren", "in_features": 2, "hidden": [16], "out_features": 1}


def _build(root: Path) -> dict:
    from zoo.build.builder import build
    from zoo.build.recipes import Recipe

    with Zoo.open(root) as z:
        build(z, Recipe.from_dict({
            "name": "t-grid", "arch": {"family": "mlp", "in_features": 64, "hidden": [32], "out_features": 10},
            "epochs": 2, "optimizer": "sgd", "search": {"mode": "grid", "seeds": 2, "params": {
                "width": [8, 16], "batch_size": [32, 128], "lr": [0.05]}},
        }), progress=False)  # fmt: skip
        g = torch.Generator().manual_seed(0)
        raw = z.add({"enc.weight": torch.randn(24, 12, generator=g), "enc.bias": torch.randn(24, generator=g),
                     "dec.weight": torch.randn(12, 24, generator=g)}, population="t-raw", name="t-raw-0")  # fmt: skip
        siren = z.add(init_state(SIREN, 0), arch=SIREN, population="t-siren", name="t-siren-0")
        build(z, Recipe.from_dict({"name": "t-inr", "arch": SIREN, "task": "inr", "epochs": 60,
                                   "inr": {"split": "train", "n": 3, "seed": 0}}), progress=False)  # fmt: skip
        return {"root": root, "raw": raw.id, "siren": siren.id, "w8": z.population("t-grid/width=8").ids(),
                "w16": z.population("t-grid/width=16").ids(), "inr": z.population("t-inr").ids()}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """8 digits MLPs (width 8, 16 x batch size 32, 128 x 2 seeds; 2 epochs), a raw state dict, a SIREN."""
    return _build(tmp_path_factory.mktemp("landscape") / "zoo")


@pytest.fixture
def zoo_copy(built: dict, tmp_path: Path) -> tuple[Zoo, dict]:
    import shutil

    root = tmp_path / "zoo"
    shutil.copytree(built["root"], root)
    z = Zoo.open(root)
    yield z, dict(built, root=root)
    z.close()


def _metrics(z: Zoo, ids: list[int]) -> pd.DataFrame:
    m = z.metrics()
    return m[m["model_id"].isin(ids)]


# ------------------------------------------------------------------------------------ spectral
def test_spectral_metrics_are_written_for_every_layer_and_equal_the_direct_computation(zoo_copy):
    z, b = zoo_copy
    run = landscape(z, "t-grid/*", metrics=("spectral",), options={"spectral": {"bootstrap": 20}})
    ids = b["w8"] + b["w16"]
    assert sorted(run.model_ids) == sorted(ids) and run.rows_written > 0
    m = _metrics(z, ids)
    direct = {s.layer: s for s in population_spectra(z.stack(b["w16"]), bootstrap=20)}
    for k, mid in enumerate(b["w16"]):
        mine = m[m["model_id"] == mid].set_index(["name", "split"])["value"]
        for layer in ("layers.0", "layers.1"):
            s = direct[layer]
            assert mine[("spectral_norm", layer)] == pytest.approx(s.spectral_norm[k].item())
            assert mine[("esd_status", layer)] == s.fit.status[k].item()  # every layer has a status
            if s.fit.status[k] <= STATUS["small_sample"]:
                assert mine[("esd_alpha", layer)] == pytest.approx(s.fit.alpha[k].item())
                assert mine[("esd_alpha_lo", layer)] == pytest.approx(s.fit.alpha_lo[k].item())
        assert mine[("esd_layers", "")] == 2
        assert mine[("stable_rank", "")] == pytest.approx((direct["layers.0"].stable_rank[k] + direct["layers.1"].stable_rank[k]).item() / 2)
    # width 8: layers.0 has 8 eigenvalues (fitted, small sample), layers.1 has 8 too; no NaN is ever stored
    assert m["value"].map(math.isfinite).all()
    w8 = m[(m["model_id"] == b["w8"][0]) & (m["name"] == "esd_status")]
    assert set(w8["split"]) == {"layers.0", "layers.1"}
    # SQL sees them
    q = z.sql("select count(*) as n from metrics where name = 'esd_status'")
    assert int(q["n"].iloc[0]) == 2 * len(ids)


def test_raw_state_dicts_get_spectra_but_are_refused_for_hessian_and_cka_with_nothing_written(zoo_copy, snapshot):
    z, b = zoo_copy
    before = snapshot(z)
    for fams in (("spectral", "hessian"), ("cka",), ("spectral", "cka")):
        with pytest.raises(ConfigError, match="raw state dict has no builder"):
            landscape(z, "t-raw", metrics=fams)
    with pytest.raises(ConfigError, match="raw state dict"):
        landscape(z, "t-grid/width=8", metrics=("cka",), options={"cka": {"reference": b["raw"]}})
    with pytest.raises(ConfigError, match="no 'image' hyperparameter"):  # a SIREN added by hand: no known image
        landscape(z, "t-siren", metrics=("spectral", "hessian"))
    with pytest.raises(ConfigError, match="split 'train'"):
        landscape(z, "t-inr", metrics=("spectral", "hessian"), options={"hessian": {"split": "test"}})
    with pytest.raises(ConfigError, match="trace method"):
        landscape(z, "t-grid/*", metrics=("spectral", "hessian"), options={"hessian": {"method": "exact"}})
    with pytest.raises(ConfigError, match="unknown landscape metric family 'sharpness'; valid .*cka, hessian, spectral"):
        landscape(z, "t-grid/*", metrics=("spectral", "sharpness"))
    with pytest.raises(NotFoundError, match="no population matches"):
        landscape(z, "no-such-*")
    assert snapshot(z) == before
    run = landscape(z, "t-raw", metrics=("spectral",))
    layers = set(run.frames["spectral"]["layer"])
    assert layers == {"enc", "dec"}  # 2-D tensors are layers, vectors are not
    assert (z.get(b["raw"]).metric("esd_status", "enc")) is not None


def test_accuracy_metrics_of_a_model_that_cannot_be_evaluated_are_refused_with_nothing_written(zoo_copy, snapshot, capsys):
    z, b = zoo_copy
    before = snapshot(z)
    with pytest.raises(ConfigError, match="raw state dict"):
        z.evaluate([b["w8"][0], b["raw"]])  # a classifier and a raw state dict: neither is recorded
    with pytest.raises(ConfigError, match="no 'image' hyperparameter"):  # a SIREN added by hand: no known image
        z.evaluate([b["siren"]])
    assert main(["eval", str(b["raw"]), "--root", str(b["root"])]) == 2
    assert "raw state dict" in capsys.readouterr().err
    assert snapshot(z) == before


def test_add_metrics_many_is_one_all_or_nothing_write(zoo_copy, snapshot):
    z, b = zoo_copy
    a, c = b["w8"][:2]
    before = snapshot(z)
    with pytest.raises(NotFoundError):
        z.add_metrics_many([(a, {"x": 1.0}), (10**9, {"x": 2.0})])
    with pytest.raises(ConfigError, match="must be a number"):
        z.add_metrics_many([(a, {"x": 1.0}), (c, {"x": "high"})])
    assert snapshot(z) == before
    gen = z.generation()
    assert z.add_metrics_many([(a, [("x", "layers.0", None, 1.5)]), (z.get(c).name, {"test_x": 2.0})]) == 2
    assert z.get(a).metric("x", "layers.0") == 1.5 and z.get(c).metric("x", "test") == 2.0 and z.generation() > gen


# ------------------------------------------------------------------------------------ hessian, cka
def test_the_hessian_of_built_inrs_is_that_of_their_own_image(zoo_copy):
    from analysis.landscape.hessian import sharpness
    from zoo.build.inr import stored_inr_data

    z, b = zoo_copy
    run = landscape(z, "t-inr", metrics=["hessian"], options={"hessian": {"probes": 12, "iters": 30}})
    f = run.frames["hessian"].set_index(["model_id", "layer"])
    data = stored_inr_data(z, b["inr"])
    direct = sharpness(SIREN, z.stack(b["inr"]), data.coords, data.targets, probes=12, iters=30, keys=b["inr"])
    for k, mid in enumerate(b["inr"]):
        assert f.loc[(mid, ""), "trace"] == pytest.approx(direct.trace[k].item(), rel=1e-5)
        assert z.get(mid).metric("hessian_trace", "train") == pytest.approx(direct.trace[k].item(), rel=1e-5)
        assert z.get(mid).metric("hessian_samples", "train") == 64  # every pixel of its 8x8 image
        assert z.get(mid).metric("hessian_top_eig", "train/layers.0") is not None


def test_hessian_and_cka_metrics_per_layer_and_whole(zoo_copy):
    z, b = zoo_copy
    ref = b["w16"][0]
    run = landscape(z, "t-grid/*", metrics=("hessian", "cka"), options={
        "hessian": {"probes": 6, "iters": 8, "samples": 64}, "cka": {"reference": ref, "samples": 64}})  # fmt: skip
    df = z.models().ids_in(b["w8"] + b["w16"]).df().set_index("id")
    for col in ("train_hessian_trace", "train_hessian_trace_se", "train_hessian_top_eig", "train/layers.0_hessian_trace",
                "train/layers.1_hessian_top_eig", "test_cka", "test/layers.0_cka", "test/logits_cka"):
        assert df[col].notna().all(), col
    assert (df["test_cka_reference"] == ref).all()
    assert df.loc[ref, "test_cka"] == pytest.approx(1.0)  # the reference against itself
    assert df.loc[ref, "train_hessian_samples"] == 64
    h = run.frames["hessian"]
    assert set(h["layer"]) == {"", "layers.0", "layers.1"} and (h.loc[h["layer"] == "", "trace_se"] > 0).all()


def test_cka_of_implicit_neural_representations_on_their_coordinate_grid(zoo_copy):
    z, b = zoo_copy
    second = z.add(init_state(SIREN, 1), arch=SIREN, population="t-siren", name="t-siren-1")
    run = landscape(z, "t-siren", metrics=("cka",), options={"cka": {"reference": b["siren"]}})
    f = run.frames["cka"].set_index(["model_id", "layer"])["cka"]
    assert f[(b["siren"], "")] == pytest.approx(1.0) and f[(second.id, "")] < 1.0
    assert z.get(second.id).metric("cka", "coords/layers.0") == pytest.approx(f[(second.id, "layers.0")])
    assert z.get(second.id).metric("cka_reference", "coords") == b["siren"]


def test_default_cka_reference_is_the_best_model_of_the_family_across_the_grid(zoo_copy):
    z, b = zoo_copy
    ids = b["w8"] + b["w16"]
    accs = {i: z.get(i).metric("acc", "test") for i in ids}
    run = landscape(z, "t-grid/*", metrics=("cka",), options={"cka": {"samples": 32}})
    assert set(run.frames["cka"]["reference_id"]) == {max(accs, key=accs.get)}


# ------------------------------------------------------------------------------------ every family (conformance)
@pytest.mark.parametrize("name", METRIC_FAMILIES.names())
def test_every_metric_family_writes_finite_rows_and_refuses_what_it_cannot_run(zoo_copy, snapshot, name):
    z, b = zoo_copy
    fam = METRIC_FAMILIES.get(name)
    assert fam.needs in ("weights", "classifier", "runnable")
    fast = {"spectral": {"bootstrap": 4}, "hessian": {"probes": 4, "iters": 3, "samples": 32}, "cka": {"samples": 32}}
    m0 = len(z.metrics())
    run = landscape(z, "t-grid/width=8", metrics=[name], options={name: fast.get(name, {})})
    frame = run.frames[name]
    assert set(frame["model_id"]) == set(b["w8"]) and run.rows_written == len(z.metrics()) - m0 > 0
    cant = [p for p, need in (("t-raw", ("classifier", "runnable")), ("t-siren", ("classifier",))) if fam.needs in need]
    before = snapshot(z)
    for pop in cant:
        with pytest.raises(ConfigError, match="cannot compute"):
            landscape(z, pop, metrics=["spectral", name])
    assert snapshot(z) == before


def test_a_registered_metric_family_runs_through_landscape_and_names_are_unique(zoo_copy):
    from zoo.errors import DuplicateError

    z, b = zoo_copy

    def norms(zoo, groups, *, record=True, progress=False):
        import pandas as pd

        rows = [(i, float(zoo.stack([i])["layers.0.weight"].norm())) for g in groups for i in g.ids]
        n = zoo.add_metrics_many([(i, {"l2_first": v}) for i, v in rows]) if record else 0
        frame = pd.DataFrame(rows, columns=["model_id", "l2_first"])
        frame.attrs["rows_written"] = n
        return frame

    register_metric_family(MetricFamily("t_norms", norms))
    try:
        with pytest.raises(DuplicateError):
            register_metric_family(MetricFamily("t_norms", norms))
        run = landscape(z, "t-grid/width=8", metrics=["t_norms"])
        assert run.rows_written == 4 and z.get(b["w8"][0]).metric("l2_first") > 0
    finally:
        METRIC_FAMILIES.unregister("t_norms")


# ------------------------------------------------------------------------------------ report
def test_rank_correlations_and_phase_grid_on_a_hand_made_table():
    df = pd.DataFrame({"id": range(8), "hp_width": [8, 8, 16, 16, 32, 32, 64, 64], "hp_batch_size": [32, 128] * 4,
                       "hp_seed": [0, 1] * 4, "up": [1, 2, 3, 4, 5, 6, 7, 8.0], "down": [8, 7, 6, 5, 4, 3, 2, 1.0],
                       "train_hessian_trace_se": [0.1] * 8})  # fmt: skip
    c = rank_correlations(df).set_index(["hparam", "metric"])
    assert c.loc[("width", "up"), "rho"] > 0.95 and c.loc[("width", "down"), "rho"] < -0.95
    assert ("seed", "up") not in c.index and ("width", "train_hessian_trace_se") not in c.index
    grid = phase_grid(df.assign(up=df["up"].where(df["hp_width"] != 64)), "up")
    assert list(grid.columns) == [8, 16, 32, 64] and list(grid.index) == [32, 128]
    assert grid.loc[32, 16] == 3 and math.isnan(grid.loc[128, 64])
    with pytest.raises(ConfigError, match="no column"):
        phase_grid(df, "nope")


def test_phase_map_png_and_its_output_guard(zoo_copy, tmp_path, snapshot):
    z, b = zoo_copy
    landscape(z, "t-grid/*", metrics=("spectral",), options={"spectral": {"bootstrap": 0}})
    table = population_table(z, "t-grid/*")
    assert not [c for c in table.columns if c.startswith("layers.")]  # whole-model columns only
    out = tmp_path / "phase.png"
    fig = phase_map(table, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and len(fig.axes) >= 2
    before = snapshot(z)
    from zoo.errors import DuplicateError, OutputPathError

    with pytest.raises(DuplicateError, match="overwrite"):
        phase_map(table, out)  # exists: replaced only with overwrite
    with pytest.raises(OutputPathError):
        phase_map(table, Path(b["root"]) / "phase.png")  # inside the zoo
    with pytest.raises(ConfigError, match="none of the metrics"):
        phase_map(table[["id", "hp_width", "hp_batch_size"]], tmp_path / "empty.png")
    assert snapshot(z) == before and not (tmp_path / "empty.png").exists()


def test_resolve_models_by_name_pattern_query_and_ids(zoo_copy):
    z, b = zoo_copy
    assert [g.ids for g in resolve_models(z, "t-grid/width=8")] == [b["w8"]]
    groups = resolve_models(z, "t-grid/*")
    assert sorted(len(g.ids) for g in groups) == [4, 4] and len({g.config["hidden"][0] for g in groups}) == 2
    assert [g.ids for g in resolve_models(z, z.population("t-grid/width=16"), limit=1)] == [b["w16"][:1]]
    mixed = resolve_models(z, [b["raw"], b["w8"][0]])
    assert len(mixed) == 2


# ------------------------------------------------------------------------------------ CLI
def test_cli_computes_stores_reports_and_refuses(zoo_copy, tmp_path, capsys, snapshot):
    z, b = zoo_copy
    root = str(b["root"])
    png = tmp_path / "grid.png"
    rc = main(["landscape", "t-grid/*", "--root", root, "--metrics", "spectral,cka", "--samples", "32", "--bootstrap", "10",
               "--report", str(png), "--json", "--no-progress"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["models"] == 8 and out["rows_written"] > 0 and png.exists()
    assert {"hparam", "metric", "rho"} <= set(out["rank_correlations"][0])
    assert out["summary"]["spectral"]["layers"] == "2"
    before = snapshot(z)
    for argv, msg in (
        (["t-raw", "--metrics", "hessian"], "raw state dict"),
        (["t-grid/*", "--metrics", "spectral,foo"], "unknown landscape metric family"),
        (["t-grid/*", "--report", str(Path(root) / "x.png")], "zoo"),
        (["t-grid/*", "--report", str(png)], "exists"),
        (["t-grid/*", "--probes", "1", "--metrics", "hessian"], "--probes"),
    ):
        assert main(["landscape", *argv, "--root", root, "--no-progress"]) == 2, argv
        assert msg in capsys.readouterr().err, argv
    assert snapshot(z) == before
    assert main(["landscape", "t-grid/width=8", "--root", root, "--no-record", "--no-progress"]) == 0
    assert "nothing written" in capsys.readouterr().out and snapshot(z) == before


# ------------------------------------------------------------------------------------ explorer page
def test_landscape_page(zoo_copy, monkeypatch):
    pytest.importorskip("streamlit")
    pytest.importorskip("plotly")
    from streamlit.testing.v1 import AppTest

    from tests.conftest import REPO_ROOT

    z, b = zoo_copy
    monkeypatch.setenv("WEIGHTZOO_HOME", str(b["root"]))
    monkeypatch.delenv("WEIGHTZOO_URL", raising=False)
    page = str(REPO_ROOT / "app" / "pages" / "8_Landscape.py")
    at = AppTest.from_file(page, default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("No landscape metrics" in i.value for i in at.info)  # nothing computed yet: says how
    gen = z.generation()
    next(x for x in at.button if x.label == "compute and store").click().run()
    assert not at.exception and z.generation() > gen
    assert any("metric rows written" in s.value for s in at.success)
    shown = [m.label for m in at.metric]
    assert "median esd_alpha" in shown or "median stable_rank" in shown
    assert any("per-layer spectra" in s.value for s in at.subheader)
    assert any("phase map" in s.value for s in at.subheader)
    assert not at.error, [e.value for e in at.error]
