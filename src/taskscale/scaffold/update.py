"""``taskscale update``: bring a generated project up to the current template, keeping its edits.

base = the pristine render of the recorded template and answers (re-rendered, checked against
the recorded digest), theirs = the live template rendered with the (possibly changed) answers,
ours = the project's files. ``merge.plan`` decides each path; ``transaction.apply`` writes them
all or none. See docs/update.md.
"""

from __future__ import annotations

import difflib
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskscale import proc
from taskscale.config import CONFIG_FILE, find_project_root, load_config, read_env_file
from taskscale.errors import ConfigError, MissingBinary, TaskscaleError, UsageError
from taskscale.scaffold import merge, transaction
from taskscale.scaffold.answers import (
    Answers,
    answer_keys,
    check_answer,
    check_answers,
    project_config,
)
from taskscale.scaffold.record import RECORD_FILE, Record, read_record
from taskscale.scaffold.releases import (
    Catalog,
    RenderedFile,
    Template,
    Tree,
    default_catalog,
    digest,
)
from taskscale.scaffold.values import ENV_FILE, SECRET_KEYS, env_file_text, generate_secrets

# Never part of the merge: written by taskscale itself, or the user's and git's own.
_NOT_TEMPLATE = (RECORD_FILE, ENV_FILE)


@dataclass(frozen=True)
class UpdateSpec:
    project: Path | None = None
    answers: Mapping[str, str] = field(default_factory=dict)
    dry_run: bool = False
    force: bool = False
    adopt: bool = False


@dataclass(frozen=True)
class FileOutcome:
    path: str
    action: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "action": self.action, "detail": self.detail}


@dataclass(frozen=True)
class UpdateResult:
    path: Path
    old: Record
    new: Record
    old_template: str
    new_template: str
    files: list[FileOutcome]
    dry_run: bool
    adopted: bool = False
    recovered: bool = False
    diff: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def conflicts(self) -> list[str]:
        return [f.path for f in self.files if f.action == merge.CONFLICT]

    @property
    def changed(self) -> list[FileOutcome]:
        return [f for f in self.files if f.action in _CHANGING]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "dry_run": self.dry_run,
            "adopted": self.adopted,
            "recovered_interrupted_update": self.recovered,
            "from": {**self.old.to_dict(), "label": self.old_template},
            "to": {**self.new.to_dict(), "label": self.new_template},
            "files": [f.to_dict() for f in self.files],
            "conflicts": self.conflicts,
            "diff": self.diff if self.dry_run else None,
            "warnings": self.warnings,
        }


_CHANGING = {merge.ADDED, merge.UPDATED, merge.MERGED, merge.REMOVED, merge.CONFLICT}


def update_project(spec: UpdateSpec, catalog: Catalog | None = None) -> UpdateResult:
    catalog = catalog or default_catalog()
    root = find_project_root(spec.project or Path.cwd())
    changed = {key: check_answer(key, value) for key, value in spec.answers.items()}
    recovered = False
    if transaction.stage_dir(root).exists():
        if spec.dry_run:
            raise UsageError(
                "an earlier `taskscale update` was interrupted",
                hint="run `taskscale update` without --dry-run to restore the project first",
            )
        recovered = transaction.recover(root)
    if not spec.force and not spec.dry_run:
        _refuse_dirty_git(root)

    if spec.adopt:
        old_answers = check_answers({**_answers_in_config(root), **changed})
        old_template, base = _best_match(root, catalog, old_answers)
        old = Record(old_template.version, old_template.digest, digest(base), old_answers)
        new_answers = old_answers
    else:
        old = _read_record(root)
        old_template, base = _pristine(root, catalog, old)
        new_answers = check_answers({**old.answers, **changed})

    live = catalog.live()
    theirs = _template_files(live.render(new_answers))
    new = Record(catalog.version, live.digest, digest(theirs), new_answers)
    changes = merge.plan(
        base, theirs, lambda path: _read_ours(root, path), f"template {new.version}"
    )

    ops = [
        transaction.Op(path, item.data, _mode(root / path, item.executable))
        for change in changes
        for path, item in change.writes
    ]
    ops += [transaction.Op(change.path, None) for change in changes if change.delete]
    env_op, secrets = _env_op(root, old, new)
    outcomes = [FileOutcome(c.path, c.action, c.detail) for c in changes]
    if env_op is not None:
        ops.append(env_op)
        detail = "every secret and value of yours kept; the new version's keys merged in"
        outcomes.append(FileOutcome(ENV_FILE, merge.UPDATED, detail))
    record_text = new.text().encode()
    record_path = root / RECORD_FILE
    if not record_path.is_file() or record_path.read_bytes() != record_text:
        ops.append(transaction.Op(RECORD_FILE, record_text))

    warnings: list[str] = []
    diff = _diff(root, ops, secrets) if spec.dry_run else ""
    if ops and not spec.dry_run:
        try:
            transaction.apply(root, ops)
        except OSError as exc:
            raise TaskscaleError(f"cannot update {root}: {exc} (the project is as it was)") from exc
        if CONFIG_FILE not in {c.path for c in changes if c.action == merge.CONFLICT}:
            try:
                load_config(root / CONFIG_FILE)
            except ConfigError as exc:
                warnings.append(f"after the update: {exc.message}")
    return UpdateResult(
        path=root,
        old=old,
        new=new,
        old_template=old_template.label,
        new_template=live.label,
        files=outcomes,
        dry_run=spec.dry_run,
        adopted=spec.adopt,
        recovered=recovered,
        diff=diff,
        warnings=warnings,
    )


def _read_record(root: Path) -> Record:
    record = read_record(root)
    if record is None:
        raise ConfigError(
            f"{root} has no {RECORD_FILE}: it was generated before `taskscale update` existed",
            hint="adopt it once with `taskscale update --adopt` (see docs/update.md)",
        )
    return record


def _pristine(root: Path, catalog: Catalog, record: Record) -> tuple[Template, Tree]:
    template = catalog.find(record.template)
    hint = "adopt the project again with `taskscale update --adopt` (see docs/update.md)"
    if template is None:
        raise ConfigError(
            f"the template that rendered {root.name} (taskscale {record.version}, "
            f"{record.template}) is not shipped with this taskscale ({catalog.version})",
            hint=hint,
        )
    base = _template_files(template.render(record.answers))
    if digest(base) != record.render:
        raise ConfigError(
            f"cannot reproduce the pristine render of {root.name}: template {template.label} "
            f"with its recorded answers renders differently from {RECORD_FILE}'s digest",
            hint=hint,
        )
    return template, base


def _template_files(tree: Tree) -> Tree:
    return {path: item for path, item in tree.items() if path not in _NOT_TEMPLATE}


def _answers_in_config(root: Path) -> Answers:
    """The answers in taskscale.toml's [project] (adopting a project that has no record)."""
    path = root / CONFIG_FILE
    try:
        project = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"cannot read the answers in {path}: {exc}",
            hint="give them with --answers name=NAME --answers broker=...",
        ) from exc
    if not isinstance(project, dict):
        return {}
    return {key: project[key] for key in answer_keys() if key in project}


def _best_match(root: Path, catalog: Catalog, answers: Answers) -> tuple[Template, Tree]:
    """The shipped template whose render has the most files identical to the project's."""
    best: tuple[int, Template, Tree] | None = None
    for template in catalog.candidates():
        try:
            render = _template_files(template.render(answers))
        except TaskscaleError:
            continue  # an old template the current context cannot render
        same = sum(1 for path, item in render.items() if _same(root / path, item))
        if best is None or same > best[0]:
            best = (same, template, render)
    if best is None:
        raise ConfigError("no shipped template renders with these answers")
    return best[1], best[2]


def _same(path: Path, item: RenderedFile) -> bool:
    try:
        return path.is_file() and path.read_bytes() == item.data
    except OSError:
        return False


def _read_ours(root: Path, rel: str) -> merge.Ours:
    path = root / rel
    if path.is_symlink() or (path.exists() and not path.is_file()):
        return merge.InTheWay()
    try:
        return RenderedFile(path.read_bytes(), bool(path.stat().st_mode & stat.S_IXUSR))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TaskscaleError(f"cannot read {path}: {exc.strerror}") from exc


def _mode(path: Path, executable: bool) -> int:
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        current = 0o644
    exec_bits = 0o111 & (current | ((current & 0o444) >> 2))
    return (current | exec_bits) if executable else (current & ~0o111)


def _env_op(root: Path, old: Record, new: Record) -> tuple[transaction.Op | None, dict[str, str]]:
    """``.env`` keeps every secret and value the user has, and gains the keys the new version
    writes (fresh secrets for new secret keys)."""
    path = root / ENV_FILE
    existing = read_env_file(path) if path.is_file() else {}
    secrets = generate_secrets(existing)
    new_text = env_file_text(project_config(new.answers, new.version), secrets)
    if not path.is_file():
        return transaction.Op(ENV_FILE, new_text.encode(), 0o600), secrets
    ours = path.read_text(encoding="utf-8")
    base_text = env_file_text(project_config(old.answers, old.version), secrets)
    merged = merge.merge_env(
        ours, base_text, new_text, secret_keys=SECRET_KEYS, note=f"added by taskscale {new.version}"
    )
    if merged == ours:
        return None, secrets
    return transaction.Op(ENV_FILE, merged.encode(), stat.S_IMODE(path.stat().st_mode)), secrets


def _refuse_dirty_git(root: Path) -> None:
    try:
        inside = proc.run(
            ["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"], timeout=30, check=False
        )
    except MissingBinary:
        return  # no git: nothing to compare with
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        return
    status = proc.run(["git", "-C", str(root), "status", "--porcelain", "--", "."], timeout=60)
    if status.stdout.strip():
        raise UsageError(
            f"{root} has uncommitted changes: commit or stash them first, so the update can be "
            "reviewed and undone with git",
            hint="or pass --force",
        )


def _diff(root: Path, ops: list[transaction.Op], secrets: Mapping[str, str]) -> str:
    """A unified diff of what ``ops`` would do, with every secret masked."""
    chunks: list[str] = []
    for op in ops:
        path = root / op.path
        before = path.read_bytes() if path.is_file() else None
        after = op.data
        old_text = None if before is None else merge.text_of(before)
        new_text = None if after is None else merge.text_of(after)
        if (before is not None and old_text is None) or (after is not None and new_text is None):
            chunks.append(f"Binary file {op.path} differs\n")
            continue
        a = merge.mask_secrets(old_text or "", secrets)
        b = merge.mask_secrets(new_text or "", secrets)
        chunks.extend(
            difflib.unified_diff(
                merge.lines(a),
                merge.lines(b),
                fromfile="/dev/null" if before is None else f"a/{op.path}",
                tofile="/dev/null" if after is None else f"b/{op.path}",
            )
        )
        if chunks and not chunks[-1].endswith("\n"):
            chunks[-1] += "\n\\ No newline at end of file\n"
    return "".join(chunks)
