"""``.taskscale-answers.toml``: what rendered a project, so ``update`` can render it again.

It holds the template's version and digest, the digest of the pristine render (to notice a
render that can no longer be reproduced) and the answers. Never a secret: those live in ``.env``.
It is written by ``taskscale new`` and ``taskscale update``, committed with the project, and not
meant to be edited by hand.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskscale.errors import ConfigError
from taskscale.scaffold.answers import Answers, answer_keys, check_answers

RECORD_FILE = ".taskscale-answers.toml"
_HEADER = (
    "# Written by `taskscale new` and `taskscale update`: the template and answers that rendered\n"
    "# this project, so `taskscale update` can merge template changes into it. Commit it; do\n"
    "# not edit it (change answers with `taskscale update --answers KEY=VALUE`). No secrets.\n"
)


@dataclass(frozen=True)
class Record:
    version: str
    template: str  # digest of the template files
    render: str  # digest of the pristine render
    answers: Answers = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "template": self.template,
            "render": self.render,
            "answers": dict(self.answers),
        }

    def text(self) -> str:
        ordered = [key for key in answer_keys() if key in self.answers]
        lines = [
            _HEADER,
            "[template]",
            f"version = {_toml(self.version)}",
            f"digest = {_toml(self.template)}",
            f"render = {_toml(self.render)}",
            "",
            "[answers]",
            *(f"{key} = {_toml(self.answers[key])}" for key in ordered),
        ]
        return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # A JSON string is a valid TOML basic string (same escapes).
    return json.dumps(str(value), ensure_ascii=False)


def read_record(root: Path) -> Record | None:
    """The project's record; None when it has none; ``ConfigError`` (one line) when corrupt."""
    path = root / RECORD_FILE
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is corrupt: not valid TOML ({exc})") from exc
    return parse_record(raw, path)


def parse_record(raw: Mapping[str, Any], path: Path) -> Record:
    template = raw.get("template")
    answers = raw.get("answers")
    if set(raw) != {"template", "answers"} or not isinstance(template, dict):
        raise ConfigError(f"{path} is corrupt: expected exactly [template] and [answers]")
    values = {key: template.get(key) for key in ("version", "digest", "render")}
    bad = [key for key, value in values.items() if not isinstance(value, str) or not value]
    if bad or set(template) != set(values):
        raise ConfigError(
            f"{path} is corrupt: [template] needs exactly version, digest and render as strings"
        )
    for key in ("digest", "render"):
        if not str(values[key]).startswith("sha256:"):
            raise ConfigError(f"{path} is corrupt: template.{key} is not a sha256 digest")
    if not isinstance(answers, dict):
        raise ConfigError(f"{path} is corrupt: [answers] is not a table")
    checked = check_answers(answers, error=_corrupt(path))
    return Record(str(values["version"]), str(values["digest"]), str(values["render"]), checked)


def _corrupt(path: Path) -> type[ConfigError]:
    class CorruptRecord(ConfigError):
        def __init__(self, message: str, **kwargs: Any) -> None:
            super().__init__(f"{path} is corrupt: {message}", **kwargs)

    return CorruptRecord


def write_record(root: Path, record: Record) -> None:
    """Write the record atomically (a temporary file renamed over it)."""
    path = root / RECORD_FILE
    tmp = path.with_name(f".{RECORD_FILE}.tmp")
    tmp.write_text(record.text(), encoding="utf-8")
    os.replace(tmp, path)
