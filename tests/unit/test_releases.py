"""Shipped template archives: they render exactly what the released taskscale rendered."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import pytest

from taskscale import __version__
from taskscale.errors import ConfigError
from taskscale.scaffold import releases
from taskscale.scaffold.releases import Catalog, archive_template, default_catalog, digest
from taskscale.scaffold.render import template_root

# The template of main at 702e492 (taskscale 0.1.0), from which every project generated before
# `taskscale update` existed was rendered; and the digests of what `taskscale new tasks-api
# [--broker kafka]` wrote with that commit's own code (every file but .env), measured by running
# it. If these fail, projects of that version can no longer be updated.
V010_TEMPLATE = "sha256:af2164330dfcd53534a689308f71ace15519b8fb04803ab94588a3b2525b8745"
V010_RENDERS = {
    "redis": "sha256:49cddad3ffba807240bb8313dcd560fb2ca4035c9d070d8711869cebc35cff56",
    "kafka": "sha256:5e8b9528b68c0e7c6c3d2d0b541f936d3757b179c8fc0a6d70dd772ee81a8692",
}


@pytest.mark.parametrize("broker", sorted(V010_RENDERS))
def test_the_0_1_0_archive_reproduces_what_0_1_0_rendered(broker: str) -> None:
    template = default_catalog().find(V010_TEMPLATE)
    assert template is not None and template.archive is not None
    assert template.version == "0.1.0"
    render = template.render({"name": "tasks-api", "broker": broker})
    assert digest(render) == V010_RENDERS[broker]


def test_every_shipped_archive_renders_and_matches_its_digest() -> None:
    catalog = default_catalog()
    archives = catalog.archives()
    assert archives, "templates/releases ships at least the 0.1.0 template"
    for template in archives:
        found = catalog.find(releases._manifest(template.archive)["digest"])  # type: ignore[arg-type]
        assert found is not None and found.archive == template.archive
        assert found.render({"name": "demo", "broker": "kafka"})
    live = catalog.live()
    assert catalog.candidates()[0] == live


def test_the_live_template_is_shipped_as_an_archive_of_this_version() -> None:
    """A project rendered by this taskscale records the live template's digest, and `taskscale
    update` finds that template again after `templates/project` changes only in an archive: a
    template change not archived again is caught here, not by a user whose update cannot find
    where the project came from."""
    catalog = default_catalog()
    live = catalog.live()
    shipped = catalog.find(live.digest)  # an archive first, the live tree only failing that
    assert shipped is not None and shipped.archive is not None, (
        f"templates/project ({live.label}) is not archived: run "
        "`python -m taskscale.scaffold.archive` (and `git rm` a stale archive of the same "
        "version that no release shipped; docs/update.md)"
    )
    assert shipped.version == __version__, (
        f"templates/project is archived as {shipped.version}, not as taskscale {__version__}"
    )


def test_an_archive_keeps_the_context_of_its_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A default changed later in config.py (here the API port) changes new renders, never the
    re-render of an archived template."""
    template = default_catalog().find(V010_TEMPLATE)
    assert template is not None
    answers = {"name": "tasks-api", "broker": "redis"}
    real = releases.template_context

    def changed_default(answers: Any, version: str) -> dict[str, Any]:
        context = real(answers, version)
        context["ports"] = context["ports"].model_copy(update={"api": 18080})
        return context

    monkeypatch.setattr(releases, "template_context", changed_default)
    assert digest(template.render(answers)) == V010_RENDERS["redis"]
    live = Catalog(current=template_root(), releases=Path("/nonexistent")).live()
    assert "api = 18080" in live.render(answers)["taskscale.toml"].data.decode()


def test_archive_round_trip_and_tampering(tmp_path: Path) -> None:
    source = tmp_path / "tpl"
    (source / "bin").mkdir(parents=True)
    (source / "README.md.jinja").write_text("# {{ name }} uses {{ broker }} on {{ ports.api }}\n")
    (source / "bin" / "run.sh").write_text("#!/bin/sh\n")
    (source / "bin" / "run.sh").chmod(0o755)
    (source / "__pycache__").mkdir()
    (source / "__pycache__" / "x.pyc").write_bytes(b"junk")
    out = tmp_path / "releases"
    path = archive_template(source, "9.8.7", out)
    assert path.name.startswith("9.8.7-") and path.name.endswith(".tar.xz")
    assert archive_template(source, "9.8.7", out).read_bytes() == path.read_bytes()

    catalog = Catalog(current=tmp_path / "elsewhere", releases=out, version="10.0.0")
    found = catalog.find(releases.tree_digest(source))
    assert found is not None and found.version == "9.8.7"
    render = found.render({"name": "demo", "broker": "kafka"})
    assert render["README.md"].data == b"# demo uses kafka on 8080\n"
    assert render["bin/run.sh"].executable and not render["README.md"].executable
    assert set(render) == {"README.md", "bin/run.sh"}

    # Another archive whose files were changed behind its manifest's back is refused.
    bad = tmp_path / "bad"
    bad.mkdir()
    with tarfile.open(path, "r:xz") as tar:
        tar.extractall(bad, filter="data")
    (bad / "project" / "README.md.jinja").write_text("tampered\n")
    with tarfile.open(path, "w:xz") as tar:
        for member in ("template.json", "project/README.md.jinja", "project/bin/run.sh"):
            tar.add(bad / member, arcname=member)
    with pytest.raises(ConfigError, match="does not match its digest"):
        found.render({"name": "demo", "broker": "kafka"})
    path.write_bytes(b"not an archive")
    with pytest.raises(ConfigError, match="unreadable"):
        catalog.find(releases.tree_digest(source))


def test_the_maintainers_archive_command(tmp_path: Path) -> None:
    from taskscale.scaffold import archive

    source = tmp_path / "tpl"
    source.mkdir()
    (source / "a.txt.jinja").write_text("{{ name }}\n")
    assert (
        archive.main(
            ["--source", str(source), "--version", "1.2.3", "--releases", str(tmp_path / "r")]
        )
        == 0
    )
    (path,) = (tmp_path / "r").iterdir()
    short = releases.tree_digest(source).removeprefix("sha256:")[:12]
    assert path.name == f"1.2.3-{short}.tar.xz"
