"""Confinement of checkpoint paths to the helper's checkpoint directory."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidecar.errors import InvalidRequest, PathOutsideCheckpointDir
from sidecar.storage.paths import confine


@pytest.fixture
def base(tmp_path: Path) -> Path:
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    return directory


def test_relative_paths_are_taken_inside(base: Path) -> None:
    assert confine(base, "ckpt-1") == base / "ckpt-1"
    assert confine(base, "team/a/ckpt-2") == base / "team" / "a" / "ckpt-2"


def test_absolute_path_inside_is_accepted(base: Path) -> None:
    assert confine(base, str(base / "x")) == base / "x"


def test_dotdot_inside_stays_allowed(base: Path) -> None:
    assert confine(base, "a/../b") == base / "b"


@pytest.mark.parametrize("requested", [
    "../escape", "a/../../escape", "/tmp/ckpt-1", "/", "/etc/passwd", ".", "",
])
def test_outside_or_the_directory_itself_is_refused(base: Path, requested: str) -> None:
    with pytest.raises((PathOutsideCheckpointDir, InvalidRequest)) as err:
        confine(base, requested)
    if isinstance(err.value, PathOutsideCheckpointDir):
        assert err.value.status == 400
        assert str(base) in err.value.message
        assert err.value.extra["allowed_dir"] == str(base)


def test_sibling_with_common_prefix_is_outside(base: Path) -> None:
    sibling = base.parent / (base.name + "-evil")
    sibling.mkdir()
    with pytest.raises(PathOutsideCheckpointDir):
        confine(base, str(sibling / "x"))


def test_symlink_escape_is_refused(base: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, base / "link")
    with pytest.raises(PathOutsideCheckpointDir) as err:
        confine(base, "link/ckpt")
    assert str(outside / "ckpt") in err.value.message


def test_symlinked_checkpoint_dir_compares_real_paths(tmp_path: Path, base: Path) -> None:
    alias = tmp_path / "alias"
    os.symlink(base, alias)
    assert confine(alias, str(base / "x")) == base / "x"
    assert confine(base, str(alias / "y")) == base / "y"


def test_hidden_names_are_reserved(base: Path) -> None:
    for requested in (".catalogue.json", ".tmp-123", "a/.restores"):
        with pytest.raises(InvalidRequest):
            confine(base, requested)


def test_nul_byte_is_invalid(base: Path) -> None:
    with pytest.raises(InvalidRequest):
        confine(base, "a\x00b")
