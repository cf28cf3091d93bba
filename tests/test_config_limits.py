"""Bounded JSON in the catalog (issue 16, item 5): config.json, architecture configs, hparams, params.

A config over :data:`zoo.jsonlimits.MAX_CONFIG_BYTES` or nested deeper than
:data:`~zoo.jsonlimits.MAX_CONFIG_DEPTH` is refused with a :class:`ConfigError` that names the limit,
never stored and never a raw ``RecursionError``; the store is unchanged afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from tests.conftest import catalog_counts, pack_files
from zoo import Zoo
from zoo.cli import main
from zoo.errors import ConfigError
from zoo.jsonlimits import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, check_value, json_depth, loads
from zoo.models.architectures import init_state

CFG = {"family": "mlp", "in_features": 8, "hidden": [16], "out_features": 4}
DEEP = 100_000


def state(seed: int = 0) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in init_state(CFG, seed).items()}


def deep_text(n: int = DEEP) -> str:
    return '{"a":' * n + "1" + "}" * n


def deep_value(n: int = DEEP) -> dict[str, Any]:
    root: dict[str, Any] = {}
    cur = root
    for _ in range(n):
        cur["a"] = {}
        cur = cur["a"]
    return root


def catalog_state(z: Zoo) -> tuple[dict[str, int], set[str]]:
    """Every catalog table's row count and the pack files: a refused ingest changes neither."""
    return catalog_counts(z), pack_files(z.root)


def assert_unchanged(z: Zoo, before: tuple) -> None:
    assert catalog_state(z) == before
    assert z.verify().ok


@pytest.fixture
def z(zoo: Zoo) -> Zoo:
    return zoo  # conftest's fresh zoo


def hf_folder(tmp_path: Path, config_text: str | None = None, config_bytes: bytes | None = None) -> Path:
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file(state(), str(folder / "model.safetensors"))
    if config_bytes is not None:
        (folder / "config.json").write_bytes(config_bytes)
    else:
        (folder / "config.json").write_text(config_text or "{}")
    return folder


# ------------------------------------------------------------------------- config.json on ingest
def test_oversized_config_json_is_refused_and_not_stored(z: Zoo, tmp_path: Path) -> None:
    big = json.dumps({"model_type": "tiny", "vocab": [f"tok{i:07d}" for i in range(120_000)]})
    assert len(big) > MAX_CONFIG_BYTES
    folder = hf_folder(tmp_path, big)
    before = catalog_state(z)
    with pytest.raises(ConfigError) as ei:  # old code: stored whole in the catalog
        z.ingest(folder)
    msg = str(ei.value)
    assert "config.json" in msg and "1.0 MiB" in msg and "MAX_CONFIG_BYTES" in msg
    assert_unchanged(z, before)


def test_a_100mb_config_json_is_refused_by_its_size(z: Zoo, tmp_path: Path) -> None:
    folder = hf_folder(tmp_path, "{}")
    with (folder / "config.json").open("r+b") as fh:  # sparse: costs no disk
        fh.truncate(100 << 20)
    before = catalog_state(z)
    with pytest.raises(ConfigError, match="100.0 MiB"):  # old code: read all of it, then CorruptFileError
        z.ingest(folder)
    assert_unchanged(z, before)


def test_a_100k_deep_config_json_is_a_clean_error(z: Zoo, tmp_path: Path) -> None:
    folder = hf_folder(tmp_path, deep_text())
    before = catalog_state(z)
    with pytest.raises(ConfigError, match=f"more than {MAX_CONFIG_DEPTH} levels"):  # old: RecursionError
        z.ingest(folder)
    assert_unchanged(z, before)


def test_unterminated_deep_config_json_is_a_clean_error(z: Zoo, tmp_path: Path) -> None:
    folder = hf_folder(tmp_path, "[" * DEEP)  # no closers: json.loads would still recurse DEEP levels
    with pytest.raises(ConfigError, match="levels"):
        z.ingest(folder)


def test_a_65_deep_config_is_refused_and_a_64_deep_one_kept(z: Zoo, tmp_path: Path) -> None:
    ok = tmp_path / "ok"
    ok.mkdir()
    (rec,) = z.ingest(hf_folder(ok, '{"model_type": "t", "x": ' + "[" * 63 + "]" * 63 + "}"))
    assert json_depth(json.dumps(rec.arch_config["hf_config"])) == MAX_CONFIG_DEPTH
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(ConfigError):
        z.ingest(hf_folder(bad, '{"model_type": "t", "x": ' + "[" * 64 + "]" * 64 + "}"))


def test_a_large_but_legal_config_json_is_kept_whole(z: Zoo, tmp_path: Path) -> None:
    cfg = {"model_type": "tiny", "id2label": {str(i): f"label_{i}" for i in range(20_000)}}
    assert 100_000 < len(json.dumps(cfg)) < MAX_CONFIG_BYTES
    (rec,) = z.ingest(hf_folder(tmp_path, json.dumps(cfg)))
    assert rec.arch_config["hf_config"] == cfg


def test_config_json_that_is_not_json_is_corrupt_not_a_crash(z: Zoo, tmp_path: Path) -> None:
    from zoo.errors import CorruptFileError

    with pytest.raises(CorruptFileError, match="not valid JSON"):
        z.ingest(hf_folder(tmp_path, config_bytes=b'{"a": \xff}'))


# ------------------------------------------------------------------ configs given to the store API
def test_deep_raw_arch_config_in_add_is_a_clean_error(z: Zoo) -> None:
    before = catalog_state(z)
    with pytest.raises(ConfigError, match="levels"):  # old code: RecursionError
        z.add(state(), arch={"family": "raw", "hf_config": deep_value()})
    assert_unchanged(z, before)


def test_huge_raw_arch_config_in_add_is_refused(z: Zoo) -> None:
    before = catalog_state(z)
    with pytest.raises(ConfigError, match="MAX_CONFIG_BYTES"):  # old code: stored
        z.add(state(), arch={"family": "raw", "hf_config": {"blob": "x" * (MAX_CONFIG_BYTES + 1)}})
    assert_unchanged(z, before)


@pytest.mark.parametrize("config", [
    {"family": "raw", "notes": "x" * (2 * MAX_CONFIG_BYTES)},
    {"family": "raw", "hf_config": deep_value(2_000)},
    {"family": "raw", "tensors": {"w": ["float32", [2]]}, "hf_config": {"x": deep_value(MAX_CONFIG_DEPTH)}},
])  # fmt: skip
def test_register_architecture_and_populations_apply_the_same_bounds(z: Zoo, config: dict) -> None:
    before = catalog_state(z)
    with pytest.raises(ConfigError):  # old code: stored, or RecursionError
        z.register_architecture(config, name="big")
    with pytest.raises(ConfigError):
        z.create_population("p", arch=config)
    assert_unchanged(z, before)
    fine = {
        "family": "raw",
        "tensors": {"w": ["float32", [2]]},
        "hf_config": deep_value(MAX_CONFIG_DEPTH - 1),
    }
    assert z.register_architecture(fine, name="fine").config == fine


def test_a_self_referencing_config_is_refused_not_a_crash(z: Zoo) -> None:
    cfg: dict[str, Any] = {"family": "raw"}
    cfg["self"] = cfg
    with pytest.raises(ConfigError):
        z.add(state(), arch=cfg)


def test_a_model_with_many_tensors_is_not_refused_for_its_own_signature(z: Zoo) -> None:
    """The raw config lists every tensor; a big model's list may exceed 1 MiB and is still stored."""
    sd = {f"{'block_' * 30}{i}.weight": torch.zeros(1) for i in range(6_000)}
    rec = z.add(sd)
    assert len(json.dumps(rec.arch_config)) > MAX_CONFIG_BYTES
    assert len(rec.arch_config["tensors"]) == 6_000


def test_deep_and_huge_hparams_are_refused(z: Zoo) -> None:
    before = catalog_state(z)
    with pytest.raises(ConfigError, match="hyperparameter 'schedule'"):  # old: RecursionError
        z.add(state(), arch=CFG, hparams={"schedule": deep_value()})
    with pytest.raises(ConfigError, match="hyperparameter 'data'"):  # old: stored
        z.add(state(), arch=CFG, hparams={"data": list(range(300_000))})
    assert_unchanged(z, before)
    z.add(state(), arch=CFG, hparams={"lr": 1e-3, "sched": {"warmup": [1, 2, 3]}})  # ordinary ones are fine


def test_deep_lineage_params_are_refused(z: Zoo) -> None:
    before = catalog_state(z)
    with pytest.raises(ConfigError, match="params"):  # old: RecursionError
        z.add(state(), arch=CFG, params={"recipe": deep_value()})
    assert_unchanged(z, before)


def test_cli_arch_with_a_deep_json_is_a_clean_error(tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "m.safetensors"
    save_file(state(), str(ckpt))
    root = tmp_path / "zoo"
    rc = main(["ingest", str(ckpt), "--arch", deep_text(), "--root", str(root), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "--arch" in err and "levels" in err  # old code: RecursionError traceback


# ------------------------------------------------------------------------------ the helper itself
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\,:ab\u00e9\n', max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(alphabet='[]{}"\\a', max_size=4), kids,
                                                               max_size=4),
    max_leaves=30,
)  # fmt: skip


def _depth(v: Any) -> int:
    if isinstance(v, dict):
        return 1 + max(map(_depth, v.values()), default=0)
    if isinstance(v, list):
        return 1 + max(map(_depth, v), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(json_values, st.booleans())
def test_json_depth_matches_the_real_nesting(value: Any, pretty: bool) -> None:
    """Brackets and escaped quotes inside strings never count; the scan equals the true depth."""
    text = json.dumps(value, indent=1 if pretty else None, ensure_ascii=pretty)
    assert json_depth(text) == _depth(value)
    assert loads(text, "x") == value
    assert json.loads(check_value(value, "x")) == value


def test_loads_bounds() -> None:
    with pytest.raises(ConfigError, match="levels"):
        loads("[" * (MAX_CONFIG_DEPTH + 1) + "]" * (MAX_CONFIG_DEPTH + 1), "x")
    assert loads("[" * MAX_CONFIG_DEPTH + "]" * MAX_CONFIG_DEPTH, "x") is not None
    with pytest.raises(ConfigError, match="over the limit"):
        loads('"' + "x" * MAX_CONFIG_BYTES + '"', "x")
    with pytest.raises(ConfigError, match="levels"):
        check_value(deep_value(MAX_CONFIG_DEPTH + 1), "x")


@pytest.mark.parametrize("name, text, match", [
    ("deep.yml", "a: " + "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("deep.json", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "more than 64"),
    ("big.json", '{"name": "x", "arch": {"family": "mlp"}, "pad": "' + "x" * 2_000_000 + '"}', "at most 1,048,576 bytes"),
])  # fmt: skip
def test_recipe_files_are_bounded_like_configs(tmp_path, name, text, match):
    from zoo.build.recipes import Recipe

    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=match):
        Recipe.from_file(tmp_path / name)
