"""Merge parameters are finite and in their declared range, checked before any work (issue 16, item 6).

Today's failure: weights of ``.nan``/``.inf`` gave an all-NaN model and SLERP ``t: 1e9`` was
accepted, both with exit 0. The range is part of a parameter's declaration
(``Annotated[float, Range(...)]``), so every method, a plug-in's too, is checked by the same code.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, get_args, get_origin

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.merging import (
    MergeConfig,
    get_method,
    list_methods,
    merge,
    merge_method,
    merge_state_dicts,
    unregister,
)
from analysis.merging.engine import check_config
from analysis.merging.registry import FINITE, Range
from analysis.merging.writer import parse_size
from tests.conftest import mlp_state
from zoo import Zoo
from zoo.cli import main
from zoo.errors import ConfigError

BAD_NUMBERS = [math.nan, math.inf, -math.inf]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WEIGHTZOO_OFFLINE", "1")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "zoo"
    with Zoo.open(root) as z:
        for i in range(3):
            z.add(mlp_state(i), population="p")
    return root


def assert_untouched(root: Path) -> None:
    with Zoo.open(root, create=False) as z:
        assert z.models().count() == 3 and z.verify().ok
        for i in (1, 2, 3):
            assert all(torch.isfinite(t).all() for t in z.state_dict(i).values())


def numeric_params() -> list[tuple[str, str, Range]]:
    """(method, parameter, range) of every numeric parameter of every registered method."""
    out = []
    for name in list_methods():
        for p in get_method(name).params:
            if p.type in (float, int):
                out.append((name, p.name, p.range or FINITE))
    return out


# ------------------------------------------------------------------------------ the reported cases
@pytest.mark.parametrize("bad", BAD_NUMBERS)
def test_non_finite_weights_are_refused(bad):
    sds = [mlp_state(0), mlp_state(1)]
    with pytest.raises(ConfigError, match=r"linear: parameter 'weight' must be a finite number, got (nan|inf|-inf)"):
        merge_state_dicts("linear", sds, weight=[bad, 1.0])


def test_slerp_t_out_of_range_is_refused():
    sds = [mlp_state(0), mlp_state(1)]
    with pytest.raises(ConfigError, match=r"slerp: parameter 't' must be in \[0, 1\], got 1000000000"):
        merge_state_dicts("slerp", sds, t=1e9)
    with pytest.raises(ConfigError, match=r"'t' must be in \[0, 1\], got -0.5"):
        merge_state_dicts("slerp", sds, t=-0.5)
    merge_state_dicts("slerp", sds, t=1.0)  # the ends are valid


def test_yaml_nan_weight_via_cli_writes_nothing(root, tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "m.yml"
    cfg.write_text("merge_method: linear\nmodels:\n  - model: zoo:2\n    parameters: {weight: .nan}\n  - zoo:3\n")

    def no_read(*a, **k):
        raise AssertionError("an input was opened before the parameters were checked")

    monkeypatch.setattr("analysis.merging.engine.open_source", no_read)
    out = tmp_path / "out"
    rc = main(["merge", str(cfg), str(out), "--to-zoo", "--root", str(root), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "'weight' must be a finite number, got nan" in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert_untouched(root)


@pytest.mark.parametrize(("argv", "msg"), [
    (["--method", "linear", "--weight", "inf", "1"], r"'weight' must be a finite number, got inf"),
    (["--method", "slerp", "--t", "1e9"], r"'t' must be in \[0, 1\], got 1000000000.0"),
    (["--method", "ties", "--base", "zoo:1", "--density", "0"], r"'density' must be in \(0, 1\], got 0.0"),
    (["--method", "dare_ties", "--base", "zoo:1", "--density", "1.5"], r"'density' must be in \(0, 1\], got 1.5"),
    (["--method", "breadcrumbs", "--base", "zoo:1", "--gamma", "-0.1"], r"'gamma' must be in \[0, 1\], got -0.1"),
    (["--method", "task_arithmetic", "--base", "zoo:1", "--lambda", "nan"], r"'lambda' must be a finite number, got nan"),
    (["--method", "opcm", "--base", "zoo:1", "--param", "alpha=2"], r"'alpha' must be in \[0, 1\], got 2"),
    (["--method", "metric_weighted", "--param", "temperature=0"], r"'temperature' must be in \(0, inf\), got 0"),
])  # fmt: skip
def test_cli_refuses_bad_numbers_with_the_valid_range(root, tmp_path, capsys, argv, msg):
    out = tmp_path / "out"
    rc = main(["merge", *argv, "--models", "zoo:2", "zoo:3", "--out", str(out), "--to-zoo",
               "--root", str(root), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2, err
    assert re.search(msg, err), err
    assert not out.exists()
    assert_untouched(root)


def test_check_config_runs_before_inputs_are_opened(tmp_path):
    """The library path too: merge() refuses before it opens a model (the paths do not even exist)."""
    cfg = {"merge_method": "slerp", "models": [str(tmp_path / "a"), str(tmp_path / "b")], "parameters": {"t": 1e9}}
    with pytest.raises(ConfigError, match=r"'t' must be in \[0, 1\]"):
        merge(cfg, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # metric_weighted's loss may come from zoo metrics later: only what was given is checked now
    check_config(MergeConfig.from_dict({"merge_method": "metric_weighted", "models": ["zoo:1", "zoo:2"]}))
    with pytest.raises(ConfigError, match="'loss' must be a finite number"):
        check_config(MergeConfig.from_dict({"merge_method": "metric_weighted",
                                            "models": [{"model": "zoo:1", "parameters": {"loss": math.inf}}, "zoo:2"]}))  # fmt: skip


@pytest.mark.parametrize("size", ["nan", "inf", "-1GB", 0, -5])
def test_bad_shard_sizes_are_config_errors(size):
    with pytest.raises(ConfigError, match="bad size"):
        parse_size(size)


# ------------------------------------------------------------------------------ every method, systematically
@pytest.mark.parametrize(("method", "param", "rng"), numeric_params(), ids=lambda x: str(x))
@pytest.mark.parametrize("bad", BAD_NUMBERS)
def test_every_numeric_parameter_refuses_non_finite(method, param, rng, bad):
    p = get_method(method).param(param)
    with pytest.raises(ConfigError, match=f"{method}: parameter '{param}' must be"):
        p.convert(bad, method)


def test_declared_ranges():
    ranges = {(m, p): str(r) for m, p, r in numeric_params()}
    for m in ("ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties"):
        assert ranges[(m, "density")] == "(0, 1]" and ranges[(m, "weight")] == ranges[(m, "lambda")] == "a finite number"
    assert ranges[("breadcrumbs", "gamma")] == "[0, 1]"
    assert ranges[("slerp", "t")] == ranges[("slerp", "dot_threshold")] == ranges[("opcm", "alpha")] == "[0, 1]"
    assert ranges[("slerp", "eps")] == "[0, inf)" and ranges[("metric_weighted", "temperature")] == "(0, inf)"
    out = get_method("ties").describe()
    assert "density: float per model in (0, 1] (default 1.0)" in out


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_in_range_accepted_out_of_range_refused(data):
    method, param, rng = data.draw(st.sampled_from(numeric_params()))
    p = get_method(method).param(param)
    x = data.draw(st.floats(allow_nan=True, allow_infinity=True))
    if rng.contains(x):
        assert p.convert(x, method) == x
    else:
        with pytest.raises(ConfigError, match=param):
            p.convert(x, method)


def test_a_plugin_method_gets_the_checks_for_free():
    @merge_method("tmp_scaled", per_model=("share",))
    def scaled(tensors, base, *, factor: float = 1.0, share: list[Annotated[float, Range(1, 2)]] = 1.5):  # noqa: ANN001
        return tensors[0] * factor

    try:
        spec = get_method("tmp_scaled")
        assert str(spec.param("share").range) == "[1, 2]"
        with pytest.raises(ConfigError, match="'factor' must be a finite number, got nan"):
            spec.resolve(1, {"factor": math.nan})
        with pytest.raises(ConfigError, match=r"'share' must be in \[1, 2\], got 3"):
            spec.resolve(1, {}, [{"share": 3}])
    finally:
        unregister("tmp_scaled")
    with pytest.raises(TypeError, match="default of 'x' is invalid"):

        @merge_method("tmp_bad_default")
        def bad(tensors, base, *, x: Annotated[float, Range(0, 1)] = 5.0):  # noqa: ANN001  # pragma: no cover
            return tensors[0]

    assert "tmp_bad_default" not in list_methods()


def test_annotations_unwrap_to_plain_types():
    """Ranged parameters still convert like floats (strings from --param, ints from YAML)."""
    p = get_method("ties").param("density")
    assert p.type is float and get_origin(p.type) is None and not get_args(p.type)
    assert p.convert("0.5", "ties") == 0.5 and p.convert(1, "ties") == 1.0
