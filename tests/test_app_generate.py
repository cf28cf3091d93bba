"""The explorer's Generate page under AppTest: pick a stored generator, sample, see the verdict, save."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import REPO_ROOT
from zoo import Zoo

pytest.importorskip("streamlit", reason="the explorer needs Streamlit: pip install 'weightzoo[app]'")

from streamlit.testing.v1 import AppTest  # noqa: E402

GENERATE = REPO_ROOT / "app" / "pages" / "5_Generate.py"
RECIPE = {"name": "p-mlp", "arch": {"family": "mlp", "in_features": 64, "hidden": [8], "out_features": 10},
          "epochs": 3, "checkpoint_epochs": [3], "search": {"mode": "grid", "seeds": 18, "params": {"lr": [0.01]}}}  # fmt: skip


@pytest.fixture(scope="module")
def gen_root(tmp_path_factory):
    import generators
    from zoo.build.builder import build
    from zoo.build.recipes import Recipe

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("appgen") / "zoo"
    with Zoo.open(root) as z:
        build(z, Recipe.from_dict(RECIPE), progress=False)
        generators.train(z, "p-mlp", "flow", name="page-flow", holdout=2,
                         params={"train_steps": 30, "denoiser_params": {"width": 32, "depth": 1}})  # fmt: skip
    return root


def _page(root, monkeypatch) -> AppTest:
    monkeypatch.setenv("WEIGHTZOO_HOME", str(root))
    monkeypatch.delenv("WEIGHTZOO_URL", raising=False)
    at = AppTest.from_file(str(GENERATE), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_generate_page_samples_judges_and_saves(gen_root, monkeypatch) -> None:
    at = _page(gen_root, monkeypatch)
    assert "page-flow" in at.selectbox(key="gen_pick").value
    at.number_input(key="gen_n").set_value(8)
    at.number_input(key="gen_steps").set_value(3)
    at.slider(key="gen_temperature").set_value(0.5)
    assert "latent: " in at.caption[0].value  # the default generator learns in a PCA latent
    at.button(key="gen_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    shown = "\n".join(str(e.value) for e in [*at.success, *at.warning])
    assert "verdict:" in shown and "novelty ratio" in shown
    assert any(m.label == "novelty ratio" for m in at.metric)
    with Zoo.open(gen_root, create=False) as z:
        before = z.models().count()
    at.button(key="gen_save").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("saved 8 samples" in str(s.value) for s in at.success)
    with Zoo.open(gen_root, create=False) as z:
        assert z.models().count() == before + 8
        assert z.models().population("page-flow/samples").count() == 8
        edge = z.models().population("page-flow/samples").first().parents()[0]
        assert edge.params["temperature"] == 0.5


def test_generate_page_without_generators_says_how_to_train_one(tmp_path, monkeypatch) -> None:
    from zoo.models.architectures import init_state

    cfg = {"family": "mlp", "in_features": 4, "hidden": [3], "out_features": 2}
    with Zoo.open(tmp_path / "zoo") as z:
        z.add(init_state(cfg, 0), arch=cfg, population="one")
    at = _page(tmp_path / "zoo", monkeypatch)
    assert "weightzoo generate train" in at.info[0].value
