"""Which template rendered a project, and how to render it again exactly.

The live template (``templates/project``) renders new projects. Every template a recorded project
may come from is also shipped as an archive, ``templates/releases/<version>-<digest>.tar.xz``:
the template files plus ``template.json`` (version, digest, and the context values of that time
that do not depend on the answers, so a later change of a default in ``config.py`` cannot change
what an old template renders). A template is known by the digest of its files; ``taskscale
update`` re-renders the recorded one with the recorded answers to get the pristine old render.

Maintainers archive the template of each release (and the last one before a template change
lands) with ``python -m taskscale.scaffold.archive``.
"""

from __future__ import annotations

import hashlib
import io
import json
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from taskscale import __version__
from taskscale.config import ProjectSection
from taskscale.errors import ConfigError, TaskscaleError
from taskscale.scaffold import values
from taskscale.scaffold.answers import answer_keys, project_config
from taskscale.scaffold.render import render_tree, source_files, template_root

ARCHIVE_SUFFIX = ".tar.xz"
MANIFEST = "template.json"
TREE_PREFIX = "project/"
DIGEST_CHARS = 12


@dataclass(frozen=True)
class RenderedFile:
    data: bytes
    executable: bool = False


Tree = dict[str, RenderedFile]


def digest(files: Mapping[str, bytes | RenderedFile]) -> str:
    """A content hash of a file tree (paths and bytes; modes are left out, as a wheel may lose
    them)."""
    h = hashlib.sha256()
    for path in sorted(files):
        item = files[path]
        data = item.data if isinstance(item, RenderedFile) else item
        h.update(path.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return "sha256:" + h.hexdigest()


def read_tree(root: Path, paths: Iterable[Path]) -> Tree:
    tree: Tree = {}
    for rel in paths:
        path = root / rel
        tree[rel.as_posix()] = RenderedFile(
            path.read_bytes(), bool(path.stat().st_mode & stat.S_IXUSR)
        )
    return tree


def template_context(answers: Mapping[str, Any], version: str) -> dict[str, Any]:
    """What the templates see for ``answers``, as taskscale ``version`` would have shown it."""
    return values.template_context(project_config(answers, version))


@dataclass(frozen=True)
class Template:
    """One template: the live one (``archive`` None) or a shipped archive."""

    version: str
    digest: str
    root: Path
    archive: Path | None = None

    @property
    def label(self) -> str:
        return f"{self.version} ({self.digest.removeprefix('sha256:')[:DIGEST_CHARS]})"

    def render(self, answers: Mapping[str, Any]) -> Tree:
        """The pristine render of this template for ``answers`` (no ``.env``, no record)."""
        with tempfile.TemporaryDirectory(prefix="taskscale-render-") as tmp:
            if self.archive is None:
                source, context = self.root, template_context(answers, self.version)
            else:
                source = Path(tmp) / "template"
                frozen = _extract(self.archive, source)
                context = _overlay(_plain(template_context(answers, self.version)), frozen)
            out = Path(tmp) / "out"
            try:
                written = render_tree(source, out, context)
            except OSError as exc:
                raise TaskscaleError(f"cannot render template {self.label}: {exc}") from exc
            return read_tree(out, written)


@dataclass(frozen=True)
class Catalog:
    """The live template and the shipped archives."""

    current: Path
    releases: Path
    version: str = __version__

    def live(self) -> Template:
        return Template(self.version, tree_digest(self.current), self.current)

    def archives(self) -> list[Template]:
        """Every shipped archive, oldest version first."""
        found = []
        for path in sorted(self.releases.glob(f"*{ARCHIVE_SUFFIX}")):
            version, _, short = path.name.removesuffix(ARCHIVE_SUFFIX).rpartition("-")
            found.append(Template(version, "sha256:" + short, path.parent, archive=path))
        return sorted(found, key=lambda t: _version_key(t.version))

    def find(self, template_digest: str) -> Template | None:
        """The template with this digest: an archive first (its context values are frozen),
        else the live template."""
        short = template_digest.removeprefix("sha256:")[:DIGEST_CHARS]
        for template in self.archives():
            if template.digest == "sha256:" + short:
                full = _manifest(template.archive)["digest"] if template.archive else None
                if full != template_digest:
                    continue
                return Template(template.version, template_digest, template.root, template.archive)
        live = self.live()
        return live if live.digest == template_digest else None

    def candidates(self) -> list[Template]:
        """Every template a project can have come from: the live one first, then archives,
        newest first, without duplicates."""
        live = self.live()
        seen = {live.digest}
        out = [live]
        for template in reversed(self.archives()):
            assert template.archive is not None
            full = str(_manifest(template.archive)["digest"])
            if full not in seen:
                seen.add(full)
                out.append(Template(template.version, full, template.root, template.archive))
        return out


def default_catalog() -> Catalog:
    root = template_root()
    return Catalog(current=root, releases=root.parent / "releases")


def tree_digest(source: Path) -> str:
    return digest({rel.as_posix(): (source / rel).read_bytes() for rel in source_files(source)})


def archive_template(source: Path, version: str, releases: Path) -> Path:
    """Write ``source`` (a template tree) as the archive of ``version`` into ``releases``."""
    files = source_files(source)
    tree = read_tree(source, files)
    tree_hash = digest(tree)
    manifest = {"version": version, "digest": tree_hash, "context": frozen_context(version)}
    releases.mkdir(parents=True, exist_ok=True)
    name = f"{version}-{tree_hash.removeprefix('sha256:')[:DIGEST_CHARS]}{ARCHIVE_SUFFIX}"
    target = releases / name
    tmp = target.with_name(f".{name}.tmp")
    with tarfile.open(tmp, "w:xz", preset=9) as tar:
        _add(tar, MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode(), False)
        for path, item in sorted(tree.items()):
            _add(tar, TREE_PREFIX + path, item.data, item.executable)
    tmp.replace(target)
    return target


def frozen_context(version: str) -> dict[str, Any]:
    """The context values that no answer changes: two renders whose answers differ in every
    answer agree on exactly these."""
    first, second = _contrasting_answers()
    return _common(
        _plain(template_context(first, version)), _plain(template_context(second, version))
    )


def _contrasting_answers() -> tuple[dict[str, Any], dict[str, Any]]:
    first: dict[str, Any] = {"name": "sample-one"}
    second: dict[str, Any] = {"name": "sample-two"}
    for key in answer_keys():
        if key == "name":
            continue
        annotation = ProjectSection.model_fields[key].annotation
        choices: tuple[Any, ...] = ()
        if get_origin(annotation) is Literal:
            choices = get_args(annotation)
        elif annotation is bool:
            choices = (False, True)
        if len(choices) >= 2:
            first[key], second[key] = choices[0], choices[1]
    return first, second


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _common(one: Mapping[str, Any], two: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in one.items():
        if key not in two:
            continue
        other = two[key]
        if isinstance(value, Mapping) and isinstance(other, Mapping):
            common = _common(value, other)
            if common:
                out[key] = common
        elif value == other:
            out[key] = value
    return out


def _overlay(base: dict[str, Any], frozen: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in frozen.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _overlay(out[key], value)
        else:
            out[key] = value
    return out


def _add(tar: tarfile.TarFile, name: str, data: bytes, executable: bool) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o755 if executable else 0o644
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def _open(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:xz")
    except (OSError, tarfile.TarError) as exc:
        raise ConfigError(f"template archive {archive.name} is unreadable: {exc}") from exc


def _manifest(archive: Path) -> dict[str, Any]:
    with _open(archive) as tar:
        try:
            member = tar.extractfile(MANIFEST)
            data = json.loads(member.read()) if member else None
        except (KeyError, OSError, tarfile.TarError, ValueError) as exc:
            raise ConfigError(f"template archive {archive.name} has no valid manifest") from exc
    if not isinstance(data, dict) or not isinstance(data.get("digest"), str):
        raise ConfigError(f"template archive {archive.name} has no valid manifest")
    return data


def _extract(archive: Path, destination: Path) -> dict[str, Any]:
    """Unpack the template files into ``destination`` (checked against the digest); return the
    frozen context values."""
    manifest = _manifest(archive)
    tree: dict[str, bytes] = {}
    with _open(archive) as tar:
        for member in tar.getmembers():
            if not member.isfile() or not member.name.startswith(TREE_PREFIX):
                continue
            rel = member.name.removeprefix(TREE_PREFIX)
            if rel.startswith("/") or ".." in Path(rel).parts:
                raise ConfigError(f"template archive {archive.name} holds an unsafe path {rel!r}")
            fh = tar.extractfile(member)
            data = fh.read() if fh else b""
            tree[rel] = data
            target = destination / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            target.chmod(member.mode & 0o777 | stat.S_IWUSR)
    if digest(tree) != manifest["digest"]:
        raise ConfigError(f"template archive {archive.name} does not match its digest")
    context = manifest.get("context", {})
    return context if isinstance(context, dict) else {}


def _version_key(version: str) -> tuple[int | str, ...]:
    return tuple(int(part) if part.isdigit() else part for part in version.split("."))
