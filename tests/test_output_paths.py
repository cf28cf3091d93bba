"""No command may destroy a zoo or a folder weightzoo did not write (issue 16, items 1 and 7).

Every writer outside the zoo (export, merge, a saved encoder) goes through
:func:`zoo.io.outpath.guard_output_dir`: a zoo root (or anything inside or around it), the filesystem
root, the current directory, the home folder and their ancestors are refused, ``--overwrite``
replaces only a folder carrying weightzoo's marker, and OS failures are clean ``StorageError``s.
Each test checks the zoo is intact afterwards: catalog and packs present, ``verify`` clean, every
model loads bit for bit.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from analysis.merging import merge
from analysis.merging.sources import TensorInfo
from analysis.merging.writer import StreamingWriter
from tests.conftest import mlp_state, pack_files
from zoo import Zoo
from zoo.cli import main
from zoo.errors import DuplicateError, OutputPathError, StorageError
from zoo.io.export import write_hf_folder
from zoo.io.outpath import MARKER, guard_output_dir


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Offline, and a home folder of the test's own (the guard refuses $HOME and its ancestors)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WEIGHTZOO_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("WEIGHTZOO_HOME", raising=False)


@pytest.fixture
def zoo3(tmp_path: Path) -> dict:
    """A zoo at tmp/zoo with three tiny MLPs; its state before the test."""
    root = tmp_path / "zoo"
    with Zoo.open(root) as z:
        ids = [z.add(mlp_state(i), population="p").id for i in range(3)]
        states = {i: z.state_dict(i) for i in ids}
    return {"root": root, "ids": ids, "states": states, "packs": pack_files(root)}


def assert_zoo_intact(z3: dict) -> None:
    root = z3["root"]
    assert (root / "catalog.db").is_file()
    assert pack_files(root) == z3["packs"]
    with Zoo.open(root, create=False) as z:
        assert z.verify().ok
        assert [r.id for r in z.population("p").records()] == z3["ids"]
        for i, want in z3["states"].items():
            got = z.state_dict(i)
            assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------------ item 1: the zoo itself
def test_export_overwrite_onto_the_zoo_is_refused(zoo3, capsys, monkeypatch):
    root = zoo3["root"]
    monkeypatch.setenv("WEIGHTZOO_HOME", str(root))  # exactly the report: export 1 $WEIGHTZOO_HOME --overwrite
    rc, out, err = cli(capsys, "export", "1", str(root), "--overwrite")
    assert rc == 2 and "refusing" in err and "zoo root" in err and "Traceback" not in err
    assert_zoo_intact(zoo3)
    rc, _, err = cli(capsys, "export", "1", str(root), "--overwrite", "--root", str(root))
    assert rc == 2 and "zoo root" in err
    assert_zoo_intact(zoo3)


def test_merge_overwrite_onto_the_zoo_is_refused_before_reading_inputs(zoo3, capsys, monkeypatch):
    root = zoo3["root"]
    monkeypatch.setenv("WEIGHTZOO_HOME", str(root))

    def no_read(*a, **k):  # the refusal must come before any input is opened
        raise AssertionError("an input was opened")

    monkeypatch.setattr("analysis.merging.engine.open_source", no_read)
    rc, _, err = cli(capsys, "merge", "--method", "linear", "--models", "zoo:2", "zoo:3", "--out", str(root),
                     "--overwrite", "--no-progress")  # fmt: skip
    assert rc == 2 and "zoo root" in err and "Traceback" not in err
    assert_zoo_intact(zoo3)


def test_library_writers_refuse_the_zoo_too(zoo3):
    """The guard sits in the writers, not only in the commands: the API and the app get it too."""
    root = zoo3["root"]
    with pytest.raises(OutputPathError, match="zoo root"):
        write_hf_folder(root, mlp_state(0), overwrite=True)
    with Zoo.open(root, create=False) as z:
        with pytest.raises(OutputPathError, match="zoo root"):
            z.export(1, root, overwrite=True)
        with pytest.raises(OutputPathError, match="inside the zoo"):
            z.export(1, root / "packs", overwrite=True)
        with pytest.raises(OutputPathError, match="zoo root"):
            merge({"merge_method": "linear", "models": ["zoo:1", "zoo:2"]}, out_dir=root, zoo=z, overwrite=True)
    plan = {"w": TensorInfo((2,), torch.float32)}
    with pytest.raises(OutputPathError, match="inside the zoo"):
        StreamingWriter(root / "exports" / "m", plan)
    assert not (root / "exports").exists()
    assert_zoo_intact(zoo3)


def test_inside_containing_and_linked_zoos_are_refused(zoo3, tmp_path):
    root = zoo3["root"]
    for bad in (root / "packs", root / "new" / "m", root / "catalog.db"):
        with pytest.raises(OutputPathError, match="zoo"):
            write_hf_folder(bad, mlp_state(0), overwrite=True)
    # a folder around the zoo: unmarked, so never replaced; even when marked, not while it holds a zoo
    with pytest.raises(OutputPathError):
        write_hf_folder(tmp_path, mlp_state(0), overwrite=True)
    outer = write_hf_folder(tmp_path / "outer", mlp_state(0))
    os.rename(root, outer / "zoo")
    try:
        with pytest.raises(OutputPathError, match="contains the zoo"):
            write_hf_folder(outer, mlp_state(1), overwrite=True)
        assert (outer / "zoo" / "catalog.db").is_file()
    finally:
        os.rename(outer / "zoo", root)
    # symlinks are resolved: a link to the zoo, or a path through one, is the zoo
    link = tmp_path / "link"
    link.symlink_to(root, target_is_directory=True)
    for bad in (link, link / "packs", link / "m"):
        with pytest.raises(OutputPathError):
            write_hf_folder(bad, mlp_state(0), overwrite=True)
    assert not (root / "m").exists()
    assert_zoo_intact(zoo3)


def test_a_zoo_without_a_catalog_file_is_protected_by_its_root(tmp_path):
    """A zoo whose catalog is on a server has no catalog.db: callers name its root."""
    root = tmp_path / "around" / "pgzoo"
    (root / "packs").mkdir(parents=True)
    with pytest.raises(OutputPathError, match="zoo root"):
        guard_output_dir(root, overwrite=True, zoo_roots=[root])
    with pytest.raises(OutputPathError, match="inside the zoo"):
        guard_output_dir(root / "packs" / "x", overwrite=False, zoo_roots=[root])
    with pytest.raises(OutputPathError, match="contains the zoo"):
        guard_output_dir(tmp_path / "around", overwrite=True, zoo_roots=[root])


def test_default_zoo_root_is_always_protected(tmp_path, monkeypatch):
    home_zoo = tmp_path / "wzhome"
    monkeypatch.setenv("WEIGHTZOO_HOME", str(home_zoo))
    with pytest.raises(OutputPathError, match="zoo"):
        guard_output_dir(home_zoo / "exports", overwrite=False)


# ------------------------------------------------------------------------------ item 1: other places
def test_root_cwd_home_and_their_ancestors_are_refused(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "projects" / "run"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for bad, why in [("/", "filesystem root"), (".", "current directory"), ("..", "current directory"),
                     (str(home), "home folder"), ("~", "home folder"), (str(tmp_path), "current directory")]:  # fmt: skip
        for overwrite in (False, True):
            with pytest.raises(OutputPathError, match=why):
                guard_output_dir(bad, overwrite=overwrite)
    assert work.is_dir() and home.is_dir()
    # a new folder below the current directory is the normal case
    out = write_hf_folder("out/model", mlp_state(0))
    assert (work / "out" / "model" / "model.safetensors").is_file() and out == Path("out/model")


def test_overwrite_replaces_only_folders_weightzoo_wrote(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(DuplicateError, match="overwrite"):
        write_hf_folder(mine, mlp_state(0))
    with pytest.raises(OutputPathError, match=f"did not write it.*{MARKER}"):
        write_hf_folder(mine, mlp_state(0), overwrite=True)
    assert (mine / "thesis.tex").read_text() == "years of work"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    with pytest.raises(OutputPathError, match="not a folder"):
        write_hf_folder(a_file, mlp_state(0), overwrite=True)
    assert a_file.read_text() == "keep"
    # an empty folder needs no --overwrite; a folder weightzoo wrote is replaced with it
    empty = tmp_path / "empty"
    empty.mkdir()
    out = write_hf_folder(empty, mlp_state(0))
    assert (out / MARKER).is_file()
    (out / "stale.txt").write_text("old")
    write_hf_folder(out, mlp_state(1), overwrite=True)
    assert not (out / "stale.txt").exists() and (out / MARKER).is_file()
    # a link as the output folder itself is refused (it would be replaced, not its target)
    link = tmp_path / "to_mine"
    link.symlink_to(mine, target_is_directory=True)
    with pytest.raises(OutputPathError, match="symbolic link"):
        write_hf_folder(link, mlp_state(0), overwrite=True)
    assert (mine / "thesis.tex").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_target_changed_after_the_check_is_not_replaced(tmp_path):
    """The rules are checked again right before the rename: a folder that appeared meanwhile survives."""
    out = tmp_path / "out"
    w = StreamingWriter(out, {"w": TensorInfo((2,), torch.float32)})
    w.write("w", torch.ones(2))
    out.mkdir()
    (out / "precious").write_text("x")
    with pytest.raises(DuplicateError):
        w.finish()
    w.abort()
    assert (out / "precious").read_text() == "x"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_merge_cli_overwrite_of_an_unmarked_folder_is_refused(zoo3, tmp_path, capsys):
    target = tmp_path / "data"
    target.mkdir()
    (target / "keep.csv").write_text("1,2\n")
    root = str(zoo3["root"])
    rc, _, err = cli(capsys, "merge", "--method", "linear", "--models", "zoo:1", "zoo:2", "--out", str(target),
                     "--overwrite", "--root", root, "--no-progress")  # fmt: skip
    assert rc == 2 and "did not write it" in err
    assert (target / "keep.csv").read_text() == "1,2\n"
    out = tmp_path / "merged"
    for _ in range(2):  # a merge folder weightzoo wrote may be replaced
        rc, _, err = cli(capsys, "merge", "--method", "linear", "--models", "zoo:1", "zoo:2", "--out", str(out),
                         "--overwrite", "--root", root, "--no-progress")  # fmt: skip
        assert rc == 0, err
    assert (out / MARKER).is_file() and (out / "model.safetensors").is_file()
    assert_zoo_intact(zoo3)


def test_train_encoder_save_into_the_zoo_is_refused_before_training(zoo3, capsys, monkeypatch):
    def no_train(*a, **k):
        raise AssertionError("trained before checking --save")

    monkeypatch.setattr("weightspace.tasks.run_task", no_train)
    root = str(zoo3["root"])
    rc, _, err = cli(capsys, "train-encoder", "accuracy", "-p", "p", "--save", root, "--root", root, "--no-progress")
    assert rc == 2 and "zoo root" in err
    assert_zoo_intact(zoo3)


# ------------------------------------------------------------------------------ item 7: OS failures
def test_name_too_long_is_a_storage_error(zoo3, tmp_path, capsys):
    long = tmp_path / ("x" * 10_000)
    with pytest.raises(StorageError, match="too long") as e:
        write_hf_folder(long, mlp_state(0))
    assert "10" in str(e.value) and len(str(e.value)) < 1000  # names the path, shortened
    rc, _, err = cli(capsys, "export", "1", str(long), "--root", str(zoo3["root"]))
    assert rc == 2 and "too long" in err and "Traceback" not in err
    long_leaf = tmp_path / ("y" * 300)  # one component over NAME_MAX
    rc, _, err = cli(capsys, "export", "1", str(long_leaf), "--root", str(zoo3["root"]))
    assert rc == 2 and "error:" in err
    assert_zoo_intact(zoo3)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_virtual_file_system_is_a_storage_error(zoo3, capsys):
    with pytest.raises(StorageError, match="/proc/"):
        write_hf_folder("/proc/self/x", mlp_state(0))
    rc, _, err = cli(capsys, "export", "1", "/proc/self/x", "--root", str(zoo3["root"]))
    assert rc == 2 and "cannot write the export folder" in err and "Traceback" not in err
    rc, _, err = cli(capsys, "merge", "--method", "linear", "--models", "zoo:1", "zoo:2", "--out", "/proc/self/x",
                     "--root", str(zoo3["root"]), "--no-progress")  # fmt: skip
    assert rc == 2 and "cannot write the merge output folder" in err
    assert_zoo_intact(zoo3)


def test_a_file_in_the_way_above_the_folder_is_a_storage_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(StorageError, match="is a file, not a folder"):
        write_hf_folder(tmp_path / "f" / "sub" / "m", mlp_state(0))
