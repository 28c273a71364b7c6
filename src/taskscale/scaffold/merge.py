"""Three-way merge of a project's files: base (pristine old render), theirs (new render), ours.

Pure functions: they decide what each path becomes and never touch the disk. The rules, per path
of the old or new render:

- the template did not change it: the user's file stays as it is (edited, deleted or not);
- the user never changed it: it becomes the new render (added, replaced, or removed when the
  template dropped it);
- both changed it: a line merge (``merge3``, pure Python, so no git is needed); overlapping
  changes leave standard conflict markers; binary files keep the user's version and get the
  template's next to them as ``PATH.template``;
- the user deleted a file the template changed, or changed a file the template dropped: the
  user's choice stands, and the result says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from merge3 import Merge3

from taskscale.scaffold.releases import RenderedFile, Tree

YOURS_LABEL = "yours"
BINARY_SIBLING = ".template"

# What happened to a path; the first four change the project.
ADDED, UPDATED, MERGED, REMOVED = "added", "updated", "merged", "removed"
CONFLICT = "conflict"
KEPT_DELETED = "kept-deleted"  # the template changed a file the user had deleted
KEPT_CHANGED = "kept-changed"  # the template dropped a file the user had changed


class InTheWay:
    """A directory (or something else that is not a file) sits where the template has a file."""


Ours = RenderedFile | InTheWay | None


@dataclass(frozen=True)
class Change:
    """What one path becomes. ``data`` None with action removed deletes the file; ``writes``
    lists every file written (a binary conflict also writes ``PATH.template``)."""

    path: str
    action: str
    detail: str = ""
    writes: tuple[tuple[str, RenderedFile], ...] = ()
    delete: bool = False

    @property
    def changes_project(self) -> bool:
        return bool(self.writes) or self.delete


def plan(
    base: Tree, theirs: Tree, read_ours: Callable[[str], Ours], theirs_label: str
) -> list[Change]:
    """One Change per path whose fate is worth telling, sorted by path."""
    changes: list[Change] = []
    for path in sorted(set(base) | set(theirs)):
        change = _decide(path, base.get(path), theirs.get(path), read_ours(path), theirs_label)
        if change is not None:
            changes.append(change)
    return changes


def _decide(
    path: str,
    old: RenderedFile | None,
    new: RenderedFile | None,
    ours: Ours,
    theirs_label: str,
) -> Change | None:
    if old == new:
        return None  # the template did not change it: whatever the user did stands
    if isinstance(ours, InTheWay):
        return Change(path, CONFLICT, "something that is not a file is in the way; left alone")
    if new is None:
        assert old is not None
        if ours is None:
            return None
        if ours.data == old.data:
            return Change(path, REMOVED, "the template dropped it", delete=True)
        return Change(path, KEPT_CHANGED, "the template dropped it; kept: you changed it")
    if ours is None:
        if old is None:
            return Change(path, ADDED, "new in the template", writes=((path, new),))
        return Change(path, KEPT_DELETED, "the template changed it; not restored: you deleted it")
    if ours.data == new.data:
        return None if ours.executable == new.executable else _write(path, UPDATED, new, "mode")
    if old is not None and ours.data == old.data:
        mode = new.executable if ours.executable == old.executable else ours.executable
        return _write(path, UPDATED, RenderedFile(new.data, mode), "you had not changed it")
    mode = ours.executable
    if old is not None and ours.executable == old.executable:
        mode = new.executable
    base_data = old.data if old is not None else b""
    texts = [text_of(data) for data in (base_data, ours.data, new.data)]
    if any(text is None for text in texts):
        sibling = path + BINARY_SIBLING
        return Change(
            path,
            CONFLICT,
            f"binary file changed by you and by the template: yours kept, the template's "
            f"written to {sibling}",
            writes=((sibling, new),),
        )
    base_text, ours_text, new_text = (text or "" for text in texts)
    merged, conflicted = merge_text(base_text, ours_text, new_text, theirs_label)
    result = RenderedFile(merged.encode("utf-8"), mode)
    if conflicted:
        what = "added by you and by the template" if old is None else "changed by you and by it"
        return Change(path, CONFLICT, f"{what}: resolve the conflict markers", ((path, result),))
    return _write(path, MERGED, result, "your changes and the template's")


def _write(path: str, action: str, data: RenderedFile, detail: str) -> Change:
    return Change(path, action, detail, writes=((path, data),))


def text_of(data: bytes) -> str | None:
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


_LINE = re.compile(r"[^\n]*\n|[^\n]+\Z")


def lines(text: str) -> list[str]:
    """Lines with their endings (only ``\\n`` splits: a form feed stays inside its line)."""
    return _LINE.findall(text)


def merge_text(base: str, ours: str, theirs: str, theirs_label: str) -> tuple[str, bool]:
    """A line merge; returns the text (with conflict markers where needed) and whether it has
    conflicts."""
    merger = Merge3(lines(base), lines(ours), lines(theirs))
    conflicted = any(region[0] == "conflict" for region in merger.merge_regions())
    merged = merger.merge_lines(name_a=YOURS_LABEL, name_b=theirs_label, reprocess=True)
    return "".join(merged), conflicted


# --- .env: keep every value the user has, add what the new version needs -----------------------

_ENV_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$")


def env_values(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = _ENV_LINE.match(line)
        if match and not line.lstrip().startswith("#"):
            values[match.group(1)] = match.group(2).strip()
    return values


def merge_env(ours: str, base: str, new: str, *, secret_keys: tuple[str, ...], note: str) -> str:
    """``ours`` with every key and secret kept; a non-secret value the user never changed
    follows the new version (e.g. ``BROKER`` after ``--answers broker=kafka``); keys the new
    version has and ours lacks are appended under ``note``."""
    base_values, new_values = env_values(base), env_values(new)
    out: list[str] = []
    have: set[str] = set()
    for line in lines(ours):
        match = _ENV_LINE.match(line.rstrip("\n"))
        if match and not line.lstrip().startswith("#"):
            key, value = match.group(1), match.group(2).strip()
            have.add(key)
            if (
                key not in secret_keys
                and key in base_values
                and key in new_values
                and value == base_values[key]
                and new_values[key] != value
            ):
                line = f"{key}={new_values[key]}\n"
        out.append(line)
    missing = [key for key in new_values if key not in have]
    if missing:
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n"
        out.append(f"# {note}\n")
        out.extend(f"{key}={new_values[key]}\n" for key in missing)
    return "".join(out)


def mask_secrets(text: str, secrets: Mapping[str, str]) -> str:
    """``text`` with every secret value replaced by ``****`` (for diffs shown to people)."""
    for value in sorted((v for v in secrets.values() if len(v) >= 6), key=len, reverse=True):
        text = text.replace(value, "****")
    return text
