"""The one name validator (zoo.names) at every place the catalog stores a name, and the CLI's clean errors.

Issue 16, items 7 and 8: names with right-to-left overrides, C1 controls or NUL were stored and later
printed as they are; an argument that is not valid UTF-8 or a deep config gave a raw traceback.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo import Zoo
from zoo.cli import main
from zoo.errors import ConfigError, NotFoundError
from zoo.names import check_name, name_problem

RLO = "\u202e"
BAD = {
    "nul": "a\x00b",
    "newline": "a\nb",
    "escape": "a\x1b[2Jb",
    "del": "a\x7fb",
    "c1-csi": "a\x9bb",
    "c1-nel": "a\x85b",
    "rlo": f"evil{RLO}gnp.exe",
    "lre": "a\u202ab",
    "pdf": "a\u202cb",
    "lri": "a\u2066b",
    "pdi": "a\u2069b",
    "rlm": "a\u200fb",
    "lrm": "a\u200eb",
    "alm": "a\u061cb",
    "zwsp": "a\u200bb",
    "word-joiner": "a\u2060b",
    "bom": "\ufeffab",
    "soft-hyphen": "a\u00adb",
    "tag-char": "a\U000e0041b",
    "zwj-ascii": "digi\u200dts",
    "zwj-end": "\u0628\u200d",
    "line-sep": "a\u2028b",
    "para-sep": "a\u2029b",
    "surrogate": "bad\udcff",
    "noncharacter": "a\ufffeb",
    "hangul-filler": "a\u3164b",
    "leading-space": " mlp",
    "trailing-space": "mlp ",
    "trailing-nbsp": "mlp\u00a0",
    "leading-tab": "\tmlp",
    "empty": "",
}
GOOD = [
    "digits-mlp",
    "layers.0.weight",
    "a b",  # inner spaces are fine
    "Größe",
    "模型",
    "مدل\u200cها",  # Persian: zero-width non-joiner between two Arabic letters
    "क्\u200dष",  # Devanagari with a zero-width joiner
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # an emoji ZWJ sequence
    "\u2764\ufe0f",  # variation selector (category Mn, not Cf)
    "שלום",  # right-to-left letters themselves are fine, only the controls are refused
]


@pytest.mark.parametrize("name", list(BAD.values()), ids=list(BAD))
def test_validator_refuses(name: str) -> None:
    assert name_problem(name) is not None
    with pytest.raises(ConfigError) as ei:
        check_name(name, "population")
    msg = str(ei.value)
    assert "invalid population name" in msg and "rename it" in msg
    assert msg.isascii() and msg.isprintable(), "the message itself must be safe to print"


@pytest.mark.parametrize("name", GOOD)
def test_validator_accepts(name: str) -> None:
    assert check_name(name, "population") == name


def test_message_names_the_character_and_position() -> None:
    with pytest.raises(ConfigError, match=r"U\+202E \(RIGHT-TO-LEFT OVERRIDE\) at position 4 is a bidirectional control"):
        check_name(f"evil{RLO}gnp", "population")
    with pytest.raises(ConfigError, match=r"U\+0000 .* at position 1 is a control character"):
        check_name("a\x00", "tensor")
    with pytest.raises(ConfigError, match=r"U\+009B .* C1 control"):
        check_name("a\x9b", "tag")
    with pytest.raises(ConfigError, match=r"U\+DCFF .* unpaired surrogate"):
        check_name("bad\udcff", "model")
    with pytest.raises(ConfigError, match="trailing whitespace"):
        check_name("x ", "metric")
    with pytest.raises(ConfigError, match="more than 10"):
        check_name("x" * 11, "tag", max_len=10)
    with pytest.raises(ConfigError, match="not a string"):
        check_name(3, "tensor")


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(min_size=1, max_size=20))
def test_validator_never_accepts_a_refused_category(text: str) -> None:
    """Property: whatever it accepts has no control/format/surrogate/separator character and no outer space."""
    import unicodedata

    if name_problem(text) is None:
        assert text.strip() == text
        for i, c in enumerate(text):
            cat = unicodedata.category(c)
            assert cat not in ("Cc", "Cs", "Zl", "Zp"), (text, i)
            if cat == "Cf":
                assert c in "\u200c\u200d" and 0 < i < len(text) - 1 and not text[i - 1].isascii() and not text[i + 1].isascii()


# ----------------------------------------------------------------------------- every stored name
def _state(name: str = "w") -> dict[str, torch.Tensor]:
    return {name: torch.arange(4, dtype=torch.float32)}


CASES = {  # kind -> a write that stores a bad name of that kind
    "population": lambda z, bad: z.add(_state(), population=bad),
    "population (create)": lambda z, bad: z.create_population(bad),
    "model": lambda z, bad: z.add(_state(), name=bad),
    "tensor": lambda z, bad: z.add(_state(bad)),
    "architecture": lambda z, bad: z.register_architecture({"family": "mlp", "in_features": 2, "hidden": [3], "out_features": 2}, name=bad),
    "tag": lambda z, bad: z.add(_state(), tags=[bad]),
    "tag (later)": lambda z, bad: z.tag(1, bad),
    "metric": lambda z, bad: z.add(_state(), metrics={bad: 1.0}),
    "metric (later)": lambda z, bad: z.add_metrics(1, {bad: 1.0}),
    "metric split": lambda z, bad: z.add(_state(), metrics=[("acc", bad, None, 1.0)]),
    "hyperparameter": lambda z, bad: z.add(_state(), hparams={bad: 1}),
    "lineage op": lambda z, bad: z.add(_state(), parents=[1], op=bad),
    "lineage role": lambda z, bad: z.add(_state(), parents={1: bad}),
    "run": lambda z, bad: z.add(_state(), run=bad),
}
SPOOFS = {"rlo": f"ab{RLO}dc", "c1": "a\x9bb", "nul": "a\x00b", "zwsp": "a\u200bb", "space": "a "}


@pytest.fixture
def zoo1(zoo: Zoo) -> Zoo:
    zoo.add(_state("seed"), name="first", population="base")
    return zoo


@pytest.mark.parametrize("spoof", list(SPOOFS), ids=list(SPOOFS))
@pytest.mark.parametrize("kind", list(CASES), ids=list(CASES))
def test_every_stored_name_is_checked(zoo1: Zoo, snapshot, kind: str, spoof: str) -> None:
    """Fails on the old code: NUL tensor names, RLO/C1 population names, ... were stored."""
    before = snapshot(zoo1)
    gen = zoo1.generation()
    with pytest.raises(ConfigError, match=f"invalid {kind.split(' (')[0]} name"):
        CASES[kind](zoo1, SPOOFS[spoof])
    assert snapshot(zoo1) == before
    assert zoo1.generation() == gen, "refused before the write lock was taken"


def test_an_invalid_name_in_a_batch_refuses_the_whole_batch(zoo1: Zoo, snapshot) -> None:
    from zoo.store.records import NewModel

    before = snapshot(zoo1)
    with pytest.raises(ConfigError, match="U\\+202E"):
        zoo1.add_many([NewModel(_state("ok"), name="fine"), NewModel({"ok": torch.ones(4), f"x{RLO}": torch.ones(1)})])
    assert snapshot(zoo1) == before


def test_good_unicode_names_round_trip(zoo: Zoo) -> None:
    for i, name in enumerate(GOOD):
        rec = zoo.add(_state(name), name=f"{name}-{i}", population=name, tags=[name], metrics={name: 1.0})
        assert rec.population == name and list(zoo.state_dict(rec.id)) == [name]
        assert zoo.tags(rec.id) == [name]


def test_lookups_with_undecodable_names_are_not_found(zoo1: Zoo) -> None:
    with pytest.raises(NotFoundError):
        zoo1.get("bad\udcff")
    with pytest.raises(NotFoundError):
        zoo1.architecture("bad\udcff")
    with pytest.raises(NotFoundError):
        zoo1.population("bad\udcff")


# ----------------------------------------------------------------------------- the CLI's errors
def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def cli_root(zoo1: Zoo) -> str:
    return str(zoo1.root)


def test_cli_argument_that_is_not_utf8(capsys, cli_root: str) -> None:
    """`weightzoo ls -p $'bad\\xff'`: Python hands a surrogate-escaped str; old code: UnicodeEncodeError traceback."""
    rc, out, err = _run(capsys, "ls", "-p", "bad\udcff", "--root", cli_root)
    assert rc == 2 and not out
    assert err.count("\n") == 1 and "not valid UTF-8" in err and "argument 3" in err
    assert err.isascii()


def test_cli_refuses_spoofing_names_in_one_line(capsys, cli_root: str, tmp_path) -> None:
    from safetensors.torch import save_file

    f = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(2)}, f)
    rc, out, err = _run(capsys, "ingest", str(f), "-p", f"x{RLO}y", "--root", cli_root, "--no-progress")
    assert rc == 2 and err.count("\n") == 1 and "U+202E" in err and RLO not in err
    rc, _, err = _run(capsys, "tag", "1", "a\x9bb", "--root", cli_root)
    assert rc == 2 and "U+009B" in err and "\x9b" not in err


@pytest.mark.parametrize(
    "exc, expect",
    [
        (RecursionError("maximum recursion depth exceeded"), "nested too deeply"),
        (OSError(36, "File name too long", "/x" * 5000), "File name too long"),
        (FileNotFoundError(2, "No such file or directory", "/proc/self/x"), "No such file or directory: /proc/self/x"),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "not valid UTF-8"),
        (ConfigError("line one\nline two \x1b[2J"), "line one line two \\x1b[2J"),
    ],
    ids=["recursion", "long-path", "missing", "unicode", "multiline-zooerror"],
)
def test_cli_maps_errors_to_one_line(capsys, monkeypatch, cli_root: str, exc: BaseException, expect: str) -> None:
    import zoo.cli as cli

    def boom(args):
        raise exc

    monkeypatch.setattr(cli, "cmd_verify", boom)
    monkeypatch.delenv("WEIGHTZOO_DEBUG", raising=False)
    rc, out, err = _run(capsys, "verify", "--root", cli_root)
    assert rc == 2 and not out, err
    assert err.startswith("weightzoo verify: error: ") and err.count("\n") == 1 and expect in err, err
    assert "Traceback" not in err and len(err) < 600
    # --debug and WEIGHTZOO_DEBUG=1 show the traceback (the exception propagates)
    with pytest.raises(type(exc)):
        main(["verify", "--root", cli_root, "--debug"])
    monkeypatch.setenv("WEIGHTZOO_DEBUG", "1")
    with pytest.raises(type(exc)):
        main(["verify", "--root", cli_root])


def test_cli_deep_json_arch_is_a_clean_error(capsys, cli_root: str, tmp_path) -> None:
    """A 100k-deep JSON (here: the --arch option) never prints a RecursionError traceback."""
    from safetensors.torch import save_file

    f = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(2)}, f)
    deep = "[" * 100_000 + "]" * 100_000
    rc, out, err = _run(capsys, "ingest", str(f), "--arch", deep, "--root", cli_root, "--no-progress")
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
