"""The build mechanics every compiled kernel shares (``sparse/kernels/_cpp.py``), without a compiler:
``torch.utils.cpp_extension.load`` is replaced by a recorder, so what is asserted is which builds were
asked for, in which order, and what a caller is told when they fail."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from torch.utils import cpp_extension

from ticketsearch.sparse.kernels import compiled, compiled_spmm
from ticketsearch.sparse.kernels._cpp import CppExtension


def _ext(tmp_path: Path, flag_sets=(["-bad"], ["-O3"])) -> CppExtension:
    src = tmp_path / "k.cpp"
    src.write_text("// a kernel\n")
    return CppExtension(
        src, name=lambda flags: "ts_test_" + "_".join(f.strip("-") for f in flags), flag_sets=flag_sets,
        label="test", fallback="the slow path",
    )  # fmt: skip


@pytest.fixture
def fake_build(tmp_path, monkeypatch):
    """load fails for any flag set containing -bad; build folders are empty (nothing built yet)."""
    calls: list[tuple[str, list[str]]] = []

    def load(*, name, sources, extra_cflags, verbose):
        calls.append((name, list(extra_cflags)))
        if "-bad" in extra_cflags:
            raise RuntimeError("error: unrecognized option -bad\nmore compiler output")
        return ("module", name)

    (tmp_path / "builds").mkdir()
    monkeypatch.setattr(cpp_extension, "load", load)
    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda name, verbose: str(tmp_path / "builds"))
    monkeypatch.delenv("TICKETSEARCH_NO_EXT", raising=False)
    return calls


def test_a_failing_flag_set_falls_back_to_the_next_and_is_built_once(tmp_path, fake_build, capsys):
    ext = _ext(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ext.load() == ("module", "ts_test_O3")
        assert ext.load() == ("module", "ts_test_O3")  # cached: no second build
    assert fake_build == [("ts_test_bad", ["-bad"]), ("ts_test_O3", ["-O3"])]
    assert ext.error is None
    assert "building the test CPU kernel" in capsys.readouterr().err


def test_every_flag_set_failing_warns_once_with_the_last_reason(tmp_path, fake_build):
    ext = _ext(tmp_path, flag_sets=[["-bad", "-O3"], ["-bad"]])
    with pytest.warns(UserWarning, match=r"test: compiled CPU kernel unavailable .*using the slow path"):
        assert ext.load() is None
    assert ext.error == "RuntimeError: error: unrecognized option -bad"
    assert len(fake_build) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ext.load() is None  # the failure is remembered: neither rebuilt nor warned again
    assert len(fake_build) == 2


def test_build_false_neither_builds_nor_records_an_error(tmp_path, fake_build, capsys):
    ext = _ext(tmp_path)
    assert ext.load(build=False) is None
    assert fake_build == [] and ext.error is None and capsys.readouterr().err == ""


def test_an_existing_build_loads_without_the_notice(tmp_path, fake_build, capsys):
    (tmp_path / "builds" / "ts_test_O3.so").write_text("")
    ext = _ext(tmp_path, flag_sets=[["-O3"]])
    assert ext.load(build=False) == ("module", "ts_test_O3")  # build=False still loads a finished build
    assert fake_build == [("ts_test_O3", ["-O3"])]
    assert "building" not in capsys.readouterr().err


def test_disabled_and_missing_source_are_reasons_not_builds(tmp_path, fake_build, monkeypatch):
    ext = _ext(tmp_path)
    ext.source.unlink()
    assert ext.load() is None and "missing from the installation" in (ext.error or "")
    monkeypatch.setenv("TICKETSEARCH_NO_EXT", "1")
    ext = _ext(tmp_path)
    assert ext.load() is None and ext.error == "disabled by TICKETSEARCH_NO_EXT"
    assert fake_build == []


def test_both_kernels_use_the_shared_builder_with_their_own_folders():
    assert isinstance(compiled._EXT, CppExtension) and isinstance(compiled_spmm._EXT, CppExtension)
    names = {compiled._EXT.name(f) for f in compiled._EXT.flag_sets}
    names_spmm = {compiled_spmm._EXT.name(f) for f in compiled_spmm._EXT.flag_sets}
    assert all(n.startswith("ticketsearch_supermask_") for n in names)
    assert all(n.startswith("ticketsearch_spmm_") for n in names_spmm) and len(names_spmm) == 2
