"""Is the database already at the migrations' head? A cheap check so a warm ``up`` skips Alembic.

Starting Alembic costs about a second (it imports SQLAlchemy and the app's models). When the
``alembic_version`` table already holds exactly the head revisions found in the project's
``migrations/versions/*.py``, there is nothing to do. Anything unusual (other script location,
unparsable files, merge points we cannot read) answers "unknown" and Alembic runs as usual.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

_REVISION = re.compile(r"^revision\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)
_DOWN = re.compile(r"^down_revision\s*(?::[^=]*)?=\s*(.+)$", re.MULTILINE)
_QUOTED = re.compile(r"['\"]([^'\"]+)['\"]")


def script_dir(project_root: Path) -> Path | None:
    """The directory of ``alembic.ini``'s ``script_location`` (``%(here)s`` understood)."""
    ini = project_root / "alembic.ini"
    parser = configparser.ConfigParser(defaults={"here": str(project_root)})
    try:
        parser.read(ini, encoding="utf-8")
        location = parser.get("alembic", "script_location")
    except (configparser.Error, OSError):
        return None
    if ":" in location and not location.startswith("/"):
        return None  # a package resource ("pkg:migrations"): let Alembic resolve it
    path = Path(location)
    return path if path.is_absolute() else project_root / path


def head_revisions(versions_dir: Path) -> set[str] | None:
    """Revisions no other revision builds on, or None when the files cannot be read simply."""
    revisions: set[str] = set()
    parents: set[str] = set()
    files = sorted(versions_dir.glob("*.py"))
    if not files:
        return None
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            return None
        revision = _REVISION.search(text)
        down = _DOWN.search(text)
        if revision is None or down is None:
            return None
        revisions.add(revision.group(1))
        parents.update(_QUOTED.findall(down.group(1)))
    return revisions - parents


def expected_heads(project_root: Path) -> set[str] | None:
    scripts = script_dir(project_root)
    if scripts is None:
        return None
    return head_revisions(scripts / "versions")
