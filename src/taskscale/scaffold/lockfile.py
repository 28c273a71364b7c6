"""``python -m taskscale.scaffold.lockfile``: regenerate the generated project's ``uv.lock``.

A maintainer's tool (see docs/update.md), like ``archive``. Every generated project ships a
``uv.lock`` that its CI (``uv sync --locked``) and its Dockerfile install from. A lock holds the
project's own entry (its name) and every package its ``pyproject.toml`` pulls in, which differs
with the ``auth`` answer (jwt adds PyJWT and argon2). So the template is one Jinja file made from
one real ``uv lock`` per ``auth`` value: packages every variant shares are written once, the others
under ``{% if auth == ... %}``, and the project's entry goes where uv sorts it for the name being
rendered (uv orders packages by name), so a fresh project's lock is byte for byte what ``uv lock``
writes for it.

Each lock starts from the current one (uv keeps locked versions that still fit), so versions only
move when ``pyproject.toml.jinja`` asks for it or with ``--upgrade``. Needs ``uv`` and PyPI.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import get_args

from taskscale import __version__, console, proc
from taskscale.choices import Auth
from taskscale.errors import TaskscaleError
from taskscale.scaffold.releases import template_context
from taskscale.scaffold.render import render_tree, template_root

LOCK = "uv.lock"
TEMPLATE = LOCK + ".jinja"
# A project name no real dependency can have: replaced by {{ name }} in the template.
PLACEHOLDER = "taskscale-lock-placeholder"
SEPARATOR = "\n\n[[package]]\n"
LOCK_TIMEOUT_S = 600.0


def split(text: str) -> tuple[str, dict[tuple[str, str], str]]:
    """(header, {(name, version line): block}) of a uv.lock, blocks in the file's order (a
    package can be locked at two versions, for different Python versions)."""
    header, *blocks = text.split(SEPARATOR)
    packages: dict[tuple[str, str], str] = {}
    for block in blocks:
        first, _, rest = block.partition("\n")
        if not first.startswith('name = "'):
            raise TaskscaleError(f"unexpected uv.lock block starting {first!r}")
        packages[(first.removeprefix('name = "').rstrip('"'), rest.partition("\n")[0])] = block
    return header, packages


def _choice(texts: Mapping[str, str | None]) -> str:
    """Jinja that writes ``texts[auth]`` for the answer being rendered (None: nothing)."""
    values = set(texts.values())
    if len(values) == 1:
        return next(iter(values)) or ""
    parts = []
    for index, (auth, text) in enumerate(texts.items()):
        keyword = "if" if index == 0 else "elif"
        parts.append(f'{{% {keyword} auth == "{auth}" %}}{text or ""}')
    return "".join(parts) + "{% endif %}"


def make_template(locks: Mapping[str, str]) -> str:
    """One Jinja template that renders ``locks[auth]`` (their project named PLACEHOLDER) with
    the project's real name."""
    for auth, text in locks.items():
        if any(mark in text for mark in ("{{", "{%", "{#")):
            raise TaskscaleError(f"the {auth} lock holds Jinja syntax")
    parsed = {auth: split(text) for auth, text in locks.items()}
    project: dict[str, str | None] = {}
    for auth, (_, packages) in parsed.items():
        (key,) = [k for k in packages if k[0] == PLACEHOLDER]
        project[auth] = SEPARATOR + packages.pop(key).replace(PLACEHOLDER, "{{ name }}")
    # uv orders blocks by name (then version): keep each variant's order, merged.
    keys: list[tuple[str, str]] = []
    for _, packages in parsed.values():
        keys += [k for k in packages if k not in keys]
    keys.sort(key=lambda k: k[0])
    out = [
        "{%- set lock = namespace(placed=false) -%}",
        "{%- macro project_entry() -%}" + _choice(project) + "{%- endmacro -%}",
        _choice({auth: header for auth, (header, _) in parsed.items()}),
    ]
    place = "{% set lock.placed = true %}{{ project_entry() }}"
    for key in keys:
        out.append(f'{{% if not lock.placed and name < "{key[0]}" %}}{place}{{% endif %}}')
        blocks = {auth: packages.get(key) for auth, (_, packages) in parsed.items()}
        out.append(_choice({a: SEPARATOR + b if b else None for a, b in blocks.items()}))
    out.append(f"{{% if not lock.placed %}}{place}{{% endif %}}")
    text = "".join(out)
    return text if text.endswith("\n") else text + "\n"


def lock_variant(template: Path, auth: str, work: Path, upgrade: bool) -> str:
    """``uv lock`` of the template rendered for ``auth`` under the placeholder name."""
    answers = {"name": PLACEHOLDER, "broker": "redis", "auth": auth}
    out = work / auth
    render_tree(template, out, template_context(answers, __version__))
    argv = ["uv", "lock", "--quiet", *(["--upgrade"] if upgrade else [])]
    proc.run(argv, timeout=LOCK_TIMEOUT_S, cwd=out)
    return (out / LOCK).read_text(encoding="utf-8")


def regenerate(template: Path, upgrade: bool = False) -> Path:
    with tempfile.TemporaryDirectory(prefix="taskscale-lock-") as tmp:
        locks = {auth: lock_variant(template, auth, Path(tmp), upgrade) for auth in get_args(Auth)}
    target = template / TEMPLATE
    staged = target.with_name(TEMPLATE + ".tmp")
    staged.write_text(make_template(locks), encoding="utf-8")
    staged.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taskscale.scaffold.lockfile")
    parser.add_argument("--template", type=Path, default=template_root(), help="template tree")
    parser.add_argument("--upgrade", action="store_true", help="move every package to its latest")
    args = parser.parse_args(argv)
    if shutil.which("uv") is None:
        raise SystemExit("uv is not installed: pip install uv")
    console.print_text(str(regenerate(args.template, args.upgrade)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
