"""Apply a set of file writes and deletions to a project all together, or not at all.

Every new file is first staged under ``.taskscale/update/`` (the project's git-ignored state
directory, so renames stay on one filesystem). Then a journal is written; then each target is
backed up by a hard link and replaced (or unlinked). Any exception, ``KeyboardInterrupt``
included, rolls back from the backups. A process killed outright (SIGKILL, power loss) leaves the
journal behind, and ``recover`` (run at the start of the next ``taskscale update``) puts every
file back the same way. Once the journal is gone the update is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from taskscale.config import STATE_DIR
from taskscale.errors import TaskscaleError

STAGE_DIR = "update"
JOURNAL = "journal.json"


@dataclass(frozen=True)
class Op:
    """Write ``data`` to ``path`` (relative, POSIX) with ``mode``, or delete it (``data`` None)."""

    path: str
    data: bytes | None
    mode: int = 0o644


def stage_dir(root: Path) -> Path:
    return root / STATE_DIR / STAGE_DIR


def apply(root: Path, ops: Sequence[Op]) -> None:
    """All of ``ops``, or (after any failure) none of them."""
    stage = stage_dir(root)
    if stage.exists():
        raise TaskscaleError(f"{stage} exists: another update runs or was interrupted")
    try:
        stage.mkdir(parents=True)
        entries, created = _stage(root, stage, ops)
        _write_journal(stage, entries, created)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)  # nothing in the project was touched yet
        raise
    try:
        for index, entry in enumerate(entries):
            _apply_one(root, stage, index, entry)
    except BaseException:
        recover(root)
        raise
    # The commit point: without a journal, `recover` only tidies up.
    (stage / JOURNAL).unlink()
    shutil.rmtree(stage, ignore_errors=True)
    for entry in entries:
        if entry["data"] is None:
            _remove_empty_parents(root, root / str(entry["path"]))


def recover(root: Path) -> bool:
    """Undo an interrupted ``apply``; True when there was one to undo."""
    stage = stage_dir(root)
    journal = stage / JOURNAL
    if not journal.is_file():
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)  # interrupted while staging
        return False
    try:
        data = json.loads(journal.read_text(encoding="utf-8"))
        entries, created = data["entries"], data["created"]
    except (OSError, ValueError, KeyError) as exc:
        raise TaskscaleError(
            f"{journal} is unreadable, so an interrupted update cannot be undone: {exc}",
            hint=f"restore the project from git or a backup, then delete {stage}",
        ) from exc
    for index in reversed(range(len(entries))):
        entry = entries[index]
        target = root / entry["path"]
        backup = stage / "old" / str(index)
        if backup.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(backup, target)
        elif not entry["existed"]:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
    for directory in reversed(created):
        with contextlib.suppress(OSError):
            (root / directory).rmdir()
    journal.unlink()
    shutil.rmtree(stage, ignore_errors=True)
    return True


def _stage(root: Path, stage: Path, ops: Sequence[Op]) -> tuple[list[dict[str, object]], list[str]]:
    (stage / "new").mkdir()
    (stage / "old").mkdir()
    entries: list[dict[str, object]] = []
    created: list[str] = []
    for index, op in enumerate(ops):
        target = root / op.path
        if op.data is not None:
            staged = stage / "new" / str(index)
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, op.mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(op.data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(staged, op.mode)  # the umask may have narrowed it
            for parent in reversed(Path(op.path).parents[:-1]):
                if not (root / parent).is_dir() and parent.as_posix() not in created:
                    created.append(parent.as_posix())
        entries.append(
            {
                "path": op.path,
                "data": None if op.data is None else index,
                "existed": target.exists(),
            }
        )
    return entries, created


def _write_journal(stage: Path, entries: list[dict[str, object]], created: list[str]) -> None:
    tmp = stage / (JOURNAL + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"entries": entries, "created": created}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, stage / JOURNAL)


def _apply_one(root: Path, stage: Path, index: int, entry: dict[str, object]) -> None:
    target = root / str(entry["path"])
    if entry["existed"]:
        backup = stage / "old" / str(index)
        try:
            os.link(target, backup)
        except OSError:
            shutil.copy2(target, backup)
    if entry["data"] is None:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(stage / "new" / str(entry["data"]), target)


def _remove_empty_parents(root: Path, path: Path) -> None:
    parent = path.parent
    while parent != root and root in parent.parents:
        try:
            parent.rmdir()
        except OSError:
            return
        parent = parent.parent
