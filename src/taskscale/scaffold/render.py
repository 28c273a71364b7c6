"""Render a template tree: ``*.jinja`` files through Jinja2 (StrictUndefined), others copied.

The rules are the contract with ``templates/project``: paths are copied as they are, a ``.jinja``
suffix is rendered and dropped, every other file is copied byte for byte (so Python sources need
no escaping). A template that renders to nothing but whitespace is not written: that is how a
file exists only for some answers (``{% if auth == "jwt" %}...{% endif %}`` around all of it).
"""

from __future__ import annotations

import shutil
import stat
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from taskscale.errors import TaskscaleError

TEMPLATE_SUFFIX = ".jinja"
_SKIP_NAMES = {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}


def template_root() -> Path:
    """Where the project templates are: packaged data in a wheel, ``templates/`` in a checkout."""
    packaged = resources.files("taskscale") / "templates" / "project"
    if packaged.is_dir():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parents[3] / "templates" / "project"
    if checkout.is_dir():
        return checkout
    raise TaskscaleError("taskscale's project templates are missing from this installation")


def make_environment(root: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(root)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - we render source code and config, never HTML
    )


def render_tree(source: Path, destination: Path, context: Mapping[str, Any]) -> list[Path]:
    """Render every file of ``source`` into ``destination``; return the written relative paths."""
    env = make_environment(source)
    written: list[Path] = []
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if any(part in _SKIP_NAMES for part in rel.parts) or path.suffix == ".pyc":
            continue
        if path.is_dir():
            continue
        if path.name.endswith(TEMPLATE_SUFFIX):
            out_rel = rel.with_name(path.name[: -len(TEMPLATE_SUFFIX)])
            target = destination / out_rel
            try:
                text = env.get_template(rel.as_posix()).render(**context)
            except jinja2.TemplateError as exc:
                raise TaskscaleError(f"template {rel} failed to render: {exc}") from exc
            if not text.strip():
                continue  # not part of the project for these answers
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            shutil.copymode(path, target)
        else:
            out_rel = rel
            target = destination / out_rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            shutil.copymode(path, target)
        # Templates in a read-only install (e.g. a system site-packages) must not make the
        # generated project read-only.
        target.chmod(target.stat().st_mode | stat.S_IWUSR)
        written.append(out_rel)
    return written
