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
from pathlib import Path
from typing import Any

import jinja2

from taskscale.errors import TaskscaleError
from taskscale.resources import template_root

__all__ = ["make_environment", "render_tree", "template_root"]

TEMPLATE_SUFFIX = ".jinja"
_SKIP_NAMES = {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}


def make_environment(root: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(root)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - we render source code and config, never HTML
    )


def source_files(source: Path) -> list[Path]:
    """The template files under ``source`` (relative, sorted): caches and directories left out."""
    return [
        path.relative_to(source)
        for path in sorted(source.rglob("*"))
        if not any(part in _SKIP_NAMES for part in path.relative_to(source).parts)
        and path.suffix != ".pyc"
        and not path.is_dir()
    ]


def render_tree(source: Path, destination: Path, context: Mapping[str, Any]) -> list[Path]:
    """Render every file of ``source`` into ``destination``; return the written relative paths."""
    env = make_environment(source)
    written: list[Path] = []
    for rel in source_files(source):
        path = source / rel
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
