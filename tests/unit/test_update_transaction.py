"""Applying an update all together or not at all (the journal under .taskscale/update)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from taskscale.scaffold import transaction
from taskscale.scaffold.transaction import Op


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of the project (state directory excluded) with its permissions."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".taskscale" not in p.relative_to(root).parts
    }


def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "app").mkdir(parents=True)
    (root / "app" / "a.py").write_text("a = 1\n")
    (root / "app" / "gone.py").write_text("gone = 1\n")
    (root / "README.md").write_text("readme\n")
    return root


def fail_on_replace(monkeypatch: pytest.MonkeyPatch, nth: int, exc: BaseException) -> None:
    """Make the ``nth`` call of ``os.replace`` from now on raise ``exc`` (the others work)."""
    real_replace = os.replace
    calls = {"n": 0}

    def failing_replace(src: str | Path, dst: str | Path) -> None:
        calls["n"] += 1
        if calls["n"] == nth:
            raise exc
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)


OPS = [
    Op("app/a.py", b"a = 2\n"),
    Op("app/gone.py", None),
    Op("new/dir/b.sh", b"#!/bin/sh\n", 0o755),
    Op("README.md", b"readme 2\n"),
]


def test_applies_everything_and_leaves_no_stage(tmp_path: Path) -> None:
    root = project(tmp_path)
    transaction.apply(root, OPS)
    assert (root / "app" / "a.py").read_text() == "a = 2\n"
    assert not (root / "app" / "gone.py").exists()
    assert stat.S_IMODE((root / "new" / "dir" / "b.sh").stat().st_mode) == 0o755
    assert (root / "README.md").read_text() == "readme 2\n"
    assert not transaction.stage_dir(root).exists()
    assert transaction.recover(root) is False


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_a_failure_between_steps_rolls_everything_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    root = project(tmp_path)
    before = snapshot(root)
    # The journal's own rename is call 1.
    fail_on_replace(monkeypatch, fail_at + 1, OSError(28, "No space left on device"))
    with pytest.raises(OSError, match="No space left"):
        transaction.apply(root, OPS)
    monkeypatch.undo()
    assert snapshot(root) == before
    assert not (root / "new").exists()
    assert not transaction.stage_dir(root).exists()


def test_a_killed_apply_is_undone_by_recover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL runs no handler: emulate it by leaving apply at an exception that skips the
    rollback (BaseException subclasses are rolled back too, so patch the rollback out)."""
    root = project(tmp_path)
    before = snapshot(root)

    class Killed(BaseException):
        pass

    fail_on_replace(monkeypatch, 4, Killed())
    monkeypatch.setattr(transaction, "recover", lambda root: False)
    with pytest.raises(Killed):
        transaction.apply(root, OPS)
    monkeypatch.undo()
    assert snapshot(root) != before  # half applied, journal left behind
    assert (transaction.stage_dir(root) / transaction.JOURNAL).is_file()
    with pytest.raises(Exception, match="another update runs or was interrupted"):
        transaction.apply(root, OPS)
    assert transaction.recover(root) is True
    assert snapshot(root) == before
    assert not (root / "new").exists()
    assert not transaction.stage_dir(root).exists()


def test_a_stage_without_journal_is_just_removed(tmp_path: Path) -> None:
    root = project(tmp_path)
    before = snapshot(root)
    (transaction.stage_dir(root) / "new").mkdir(parents=True)
    (transaction.stage_dir(root) / "new" / "0").write_text("partial")
    assert transaction.recover(root) is False
    assert not transaction.stage_dir(root).exists()
    assert snapshot(root) == before
