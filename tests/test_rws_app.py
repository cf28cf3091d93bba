"""The explorer's Signatures page under ``streamlit.testing.v1.AppTest``: apply a signature (preview
writes nothing, storing writes one model with lineage), remove it again, and the empty states."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT
from zoo import Zoo

pytest.importorskip("streamlit", reason="the explorer needs Streamlit: pip install 'weightzoo[app]'")
pytest.importorskip("plotly", reason="the explorer needs plotly: pip install 'weightzoo[app]'")

from streamlit.testing.v1 import AppTest  # noqa: E402

PAGE = REPO_ROOT / "app" / "pages" / "7_Signatures.py"
MLP = {"family": "mlp", "in_features": 64, "hidden": [16], "out_features": 10}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """One parent with a null and a robust (rotate) fine-tune, and the robust one's signature."""
    from analysis.rws import extract_signature
    from zoo.build.builder import build
    from zoo.build.recipes import Recipe

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rwsapp") / "zoo"
    with Zoo.open(root) as z:
        build(z, Recipe.from_dict({"name": "P", "arch": MLP, "epochs": 8,
                                   "search": {"mode": "grid", "seeds": 1, "params": {"lr": [5e-3]}}}), progress=False)  # fmt: skip
        build(z, Recipe.from_dict({"name": "R", "arch": MLP, "epochs": 4, "finetune": {
            "parents": {"population": "P"}, "change": ["null", {"kind": "robust", "corruption": "rotate", "severity": 5}]},
            "search": {"mode": "grid", "params": {"lr": [2e-3]}}}), progress=False)  # fmt: skip
        robust = next(r for r in z.population("R").records() if r.hparams()["change"] == "robust")
        extract_signature(z, robust.id)
    return root


def run(path: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("WEIGHTZOO_HOME", str(root))
    monkeypatch.delenv("WEIGHTZOO_URL", raising=False)
    at = AppTest.from_file(str(path), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_no_signature_says_how_to_extract_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Zoo.open(tmp_path / "z") as z:
        z.add({"w": torch.ones(2, 2)}, population="x")
    at = run(PAGE, tmp_path / "z", monkeypatch)
    assert any("weightzoo rws extract" in i.value for i in at.info)


def test_apply_then_remove_a_signature(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "zoo"
    shutil.copytree(built, root)
    at = run(PAGE, root, monkeypatch)
    with Zoo.open(root, create=False) as z:
        clean = next(r for r in z.population("R").records() if r.hparams()["change"] == "null")
        n_models, gen = z.models().count(), z.generation()
    assert at.selectbox(key="sg_model").value == clean.id  # the signature's own clean fine-tune by default
    assert at.get("plotly_chart") and "preview: nothing written" in " ".join(c.value for c in at.caption)
    table = at.dataframe[0].value
    assert list(table["model"]) == [f"model {clean.id}", "patched"] and "rotate/5" in table.columns
    with Zoo.open(root, create=False) as z:
        assert z.generation() == gen  # previewing wrote nothing
    at.slider(key="sg_alpha").set_value(0.5).run()
    assert not at.exception
    at.button(key="sg_store").click().run()
    assert not at.exception and at.success and "op patch.rws" in at.success[0].value
    with Zoo.open(root, create=False) as z:
        assert z.models().count() == n_models + 1
        new = z.models().op("patch.rws").records()[0]
        edge = next(e for e in z.lineage(new.id, max_depth=1) if e.role == "model")
        assert edge.parent == clean.id and edge.params["coefficients"] == [0.5]
        assert new.metric("acc", "test/rotate/5") is not None
    at.run()
    assert at.selectbox(key="sg_patched").value == new.id
    assert any("largest difference from the original model" in c.value for c in at.caption)
    unpatched = at.dataframe[-1].value
    assert list(unpatched["model"]) == [f"patched {new.id}", "unpatched"]


def test_alpha_chosen_on_the_validation_split(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "zoo"
    shutil.copytree(built, root)
    at = run(PAGE, root, monkeypatch)
    with Zoo.open(root, create=False) as z:
        gen = z.generation()
    at.checkbox(key="sg_auto").check().run()
    assert not at.exception
    assert any("chosen on the validation split" in c.value for c in at.caption)
    with Zoo.open(root, create=False) as z:
        assert z.generation() == gen  # the preview (and the choice) wrote nothing
