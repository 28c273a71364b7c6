"""Create a project: validate, render into a temporary directory, then move it into place.

A failure at any step leaves no half-written project: the temporary directory is removed and the
target is untouched (or, with ``force``, only files that were fully rendered replace old ones).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskscale import __version__, proc
from taskscale.choices import Auth, Broker
from taskscale.config import (
    CONFIG_FILE,
    ProjectConfig,
    check_project_name,
    load_config,
    read_env_file,
)
from taskscale.errors import MissingBinary, TargetExists, TaskscaleError, UsageError
from taskscale.scaffold.answers import answers_of, project_config
from taskscale.scaffold.record import RECORD_FILE, Record, write_record
from taskscale.scaffold.releases import digest, read_tree, tree_digest
from taskscale.scaffold.render import render_tree, template_root
from taskscale.scaffold.values import (
    ENV_FILE,
    env_file_text,
    generate_secrets,
    template_context,
)


@dataclass(frozen=True)
class NewProjectSpec:
    name: str
    output_dir: Path
    broker: Broker = "redis"
    auth: Auth = "jwt"
    force: bool = False
    git: bool = True


@dataclass(frozen=True)
class NewProjectResult:
    path: Path
    files: list[str]
    git_initialized: bool
    reused_secrets: bool
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "files": self.files,
            "git_initialized": self.git_initialized,
            "reused_secrets": self.reused_secrets,
            "warnings": self.warnings,
        }


def default_config(name: str, broker: Broker, auth: Auth = "jwt") -> ProjectConfig:
    return project_config({"name": name, "broker": broker, "auth": auth}, __version__)


def create_project(spec: NewProjectSpec) -> NewProjectResult:
    name = check_project_name(spec.name)
    output_dir = spec.output_dir.expanduser().resolve()
    target = output_dir / name
    if target.exists() and not target.is_dir():
        raise UsageError(f"{target} exists and is not a directory")
    not_empty = target.is_dir() and any(target.iterdir())
    if not_empty and not spec.force:
        raise TargetExists(
            f"{target} already exists and is not empty",
            hint="choose another name or --output-dir, or pass --force to overwrite its files",
        )

    config = default_config(name, spec.broker, spec.auth)
    existing_env: dict[str, str] = {}
    if not_empty and (target / ENV_FILE).is_file():
        # Keep the secrets of an existing project: its database was initialised with them.
        existing_env = read_env_file(target / ENV_FILE)
    secret = generate_secrets(existing_env)
    warnings: list[str] = []

    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=output_dir))
    except OSError as exc:
        raise TaskscaleError(f"cannot write to {output_dir}: {exc.strerror}") from exc

    try:
        source = template_root()
        rendered = render_tree(source, staging, template_context(config))
        files = [p.as_posix() for p in rendered]
        # What `taskscale update` needs to render this project again (see docs/update.md).
        render_digest = digest(read_tree(staging, rendered))
        record = Record(__version__, tree_digest(source), render_digest, answers_of(config))
        write_record(staging, record)
        files.append(RECORD_FILE)
        # The rendered taskscale.toml must load back into the same typed config.
        load_config(staging / CONFIG_FILE)
        env_path = staging / ENV_FILE
        fd = os.open(env_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(env_file_text(config, secret))
        files.append(ENV_FILE)
        git_initialized = False
        if spec.git and not (target / ".git").exists():
            try:
                proc.run(["git", "init", "-q", "-b", "main", str(staging)], timeout=30)
                git_initialized = True
            except MissingBinary:
                warnings.append("git is not installed: the project was not put under git")
        staging.chmod(0o755)
        _move_into_place(staging, target, merge=not_empty or target.is_dir())
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise TaskscaleError(f"cannot write the project to {target}: {exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return NewProjectResult(
        path=target,
        files=sorted(files),
        git_initialized=git_initialized,
        reused_secrets=bool(existing_env),
        warnings=warnings,
    )


def _move_into_place(staging: Path, target: Path, *, merge: bool) -> None:
    if not merge:
        os.rename(staging, target)
        return
    # --force over an existing directory: replace file by file (each os.replace is atomic);
    # files of the old project that the templates do not produce are left alone.
    for path in sorted(staging.rglob("*")):
        rel = path.relative_to(staging)
        dest = target / rel
        if path.is_dir() and not path.is_symlink():
            dest.mkdir(parents=True, exist_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
    shutil.rmtree(staging, ignore_errors=True)
