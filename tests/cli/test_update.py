"""`taskscale update`: a project from an older fixture template, edited as a user would, merged
into a newer one; bad input; interruptions; and the real path from the template of 0.1.0
(main at 702e492) to the live one."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from taskscale import __version__, proc
from taskscale.config import load_config, load_project
from taskscale.scaffold import transaction
from taskscale.scaffold import update as update_module
from taskscale.scaffold.answers import answer_keys, project_config
from taskscale.scaffold.record import RECORD_FILE, Record, read_record, write_record
from taskscale.scaffold.releases import Catalog, Tree, archive_template, default_catalog, digest
from taskscale.scaffold.render import template_root
from taskscale.scaffold.values import SECRET_KEYS, env_file_text, generate_secrets
from taskscale.targets.compose import ComposeTarget
from tests.conftest import CliRunner, one_error_line
from tests.unit.test_releases import V010_TEMPLATE
from tests.unit.test_update_transaction import fail_on_replace, snapshot

NEW_VERSION = "9.0.0"

OLD_FILES: dict[str, str | bytes] = {
    "README.md.jinja": (
        "# {{ name }}\n\nIntro line.\n"
        'Events go through {% if broker == "kafka" %}Kafka{% else %}Redis Streams{% endif %}.\n'
        "\n## Usage\nRun it.\n"
    ),
    "app/__init__.py": "",
    "app/crud.py": (
        "def create(x):\n    return x\n\n\ndef read(x):\n    return x\n\n\n"
        "def delete(x):\n    return None\n"
    ),
    "app/models.py": 'NAME = "task"\nLIMIT = 10\n',
    "app/legacy.py": "OLD = 1\n",
    "app/old_helper.py": "HELP = 1\n",
    "docs/guide.md": "guide v1\n",
    "static/logo.bin": b"\x89PNG\x00v1",
    "static/icon.bin": b"\x00icon v1",
    "scripts/run.sh": "#!/bin/sh\necho run\n",
}
NEW_FILES: dict[str, str | bytes] = {
    **{k: v for k, v in OLD_FILES.items() if k not in ("app/legacy.py", "app/old_helper.py")},
    "README.md.jinja": (
        "# {{ name }}\n\nIntro line, improved.\n"
        'Events go through {% if broker == "kafka" %}Kafka{% else %}Redis Streams{% endif %}.\n'
        "\n## Usage\nRun it.\n\n## Deploy\nDeploy it.\n"
    ),
    "app/crud.py": (
        "def create(x):\n    return x\n\n\ndef read(x):\n    return {'x': x}\n\n\n"
        "def delete(x):\n    return None\n\n\ndef update(x):\n    return x\n"
    ),
    "app/models.py": 'NAME = "task"\nLIMIT = 100\n',
    "app/new_module.py": "NEW = True\n",
    "docs/guide.md": "guide v2\n",
    "static/logo.bin": b"\x89PNG\x00v2",
    "static/icon.bin": b"\x00icon v2",
}


def write_template(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    (root / "scripts" / "run.sh").chmod(0o755)
    # The real taskscale.toml template: the project must load as a taskscale project.
    (root / "taskscale.toml.jinja").write_text(
        (template_root() / "taskscale.toml.jinja").read_text()
    )
    return root


@pytest.fixture
def templates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Catalog:
    """An old fixture template (shipped as an archive) and a newer live one; `taskscale new`
    renders the old one, `taskscale update` knows both."""
    old = write_template(tmp_path / "tpl-old", OLD_FILES)
    new = write_template(tmp_path / "tpl-new", NEW_FILES)
    catalog = Catalog(current=new, releases=tmp_path / "releases", version=NEW_VERSION)
    # `taskscale new` records this taskscale's version: the old template is that release.
    archive_template(old, __version__, catalog.releases)
    monkeypatch.setattr("taskscale.scaffold.new.template_root", lambda: old)
    monkeypatch.setattr(update_module, "default_catalog", lambda: catalog)
    return catalog


def generate(run_cli: CliRunner, where: Path, *extra: str) -> Path:
    result = run_cli("new", "tasks-api", "-o", str(where), "--no-git", *extra)
    assert result.exit_code == 0, result.stderr
    return where / "tasks-api"


def edit_as_a_user(project: Path) -> dict[str, str]:
    """Changed lines, a new module, a deleted file, a changed binary; returns .env's secrets."""
    crud = project / "app" / "crud.py"
    crud.write_text(
        crud.read_text().replace(
            "def create(x):\n    return x\n", "def create(x):\n    return x * 2\n"
        )
    )
    (project / "app" / "models.py").write_text('NAME = "task"\nLIMIT = 50\n')
    readme = project / "README.md"
    readme.write_text(readme.read_text().replace("## Usage\n", "## Usage (mine)\n"))
    (project / "app" / "mine.py").write_text("MINE = 1\n")
    (project / "docs" / "guide.md").unlink()
    (project / "app" / "old_helper.py").write_text("HELP = 2  # mine\n")
    (project / "static" / "icon.bin").write_bytes(b"\x00my icon")
    env = project / ".env"
    secrets = {k: v for k, v in _env(env).items() if k in SECRET_KEYS}
    # An older .env without REDIS_URL, plus a key of the user's own.
    lines = [line for line in env.read_text().splitlines() if not line.startswith("REDIS_URL=")]
    env.write_text("\n".join([*lines, "MY_TOKEN=abc"]) + "\n")
    return secrets


def last_error_line(stderr: str) -> str:
    """A run that applied its update but left conflicts: a summary, then one error line."""
    assert "Traceback" not in stderr, stderr
    line = stderr.rstrip().splitlines()[-1]
    assert line.startswith("error: "), stderr
    return line


def _env(path: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )


def test_new_writes_a_record_of_template_answers_and_render(
    run_cli: CliRunner, tmp_path: Path
) -> None:
    project = generate(run_cli, tmp_path, "--broker", "kafka")
    record = read_record(project)
    assert record is not None
    assert record.answers == {"name": "tasks-api", "broker": "kafka", "auth": "jwt"}
    assert record.template == default_catalog().live().digest
    files = {
        p.relative_to(project).as_posix(): p.read_bytes()
        for p in project.rglob("*")
        if p.is_file() and p.name not in (".env", RECORD_FILE)
    }
    assert digest(files) == record.render
    text = (project / RECORD_FILE).read_text()
    secrets = [v for k, v in _env(project / ".env").items() if k in SECRET_KEYS]
    assert len(secrets) == len(SECRET_KEYS)
    assert not any(secret in text for secret in secrets)


def test_update_merges_conflicts_removes_and_keeps_secrets(
    run_cli: CliRunner, tmp_path: Path, templates: Catalog
) -> None:
    project = generate(run_cli, tmp_path)
    secrets = edit_as_a_user(project)
    env_mode = stat.S_IMODE((project / ".env").stat().st_mode)

    result = run_cli("update", "--project", str(project))
    assert result.exit_code == 1, result.stderr
    line = last_error_line(result.stderr)
    assert "2 file(s) with conflicts: app/models.py, static/icon.bin" in line

    crud = (project / "app" / "crud.py").read_text()
    assert "return x * 2" in crud and "return {'x': x}" in crud and "def update(x)" in crud
    assert "<<<<<<<" not in crud
    models = (project / "app" / "models.py").read_text()
    assert models == (
        'NAME = "task"\n<<<<<<< yours\nLIMIT = 50\n=======\nLIMIT = 100\n'
        f">>>>>>> template {NEW_VERSION}\n"
    )
    readme = (project / "README.md").read_text()
    assert "Intro line, improved." in readme and "## Usage (mine)" in readme
    assert "## Deploy" in readme
    assert (project / "app" / "new_module.py").read_text() == "NEW = True\n"
    assert (project / "app" / "mine.py").read_text() == "MINE = 1\n"
    assert not (project / "app" / "legacy.py").exists()  # dropped, untouched: removed
    assert (project / "app" / "old_helper.py").read_text() == "HELP = 2  # mine\n"
    assert not (project / "docs" / "guide.md").exists()  # the user's deletion stands
    assert (project / "static" / "logo.bin").read_bytes() == b"\x89PNG\x00v2"
    assert (project / "static" / "icon.bin").read_bytes() == b"\x00my icon"
    assert (project / "static" / "icon.bin.template").read_bytes() == b"\x00icon v2"
    assert os.access(project / "scripts" / "run.sh", os.X_OK)

    env = _env(project / ".env")
    assert {k: env[k] for k in SECRET_KEYS} == secrets
    assert env["MY_TOKEN"] == "abc"
    assert env["REDIS_URL"].endswith(f"{secrets['REDIS_PASSWORD']}@127.0.0.1:26379/0")
    assert stat.S_IMODE((project / ".env").stat().st_mode) == env_mode == 0o600

    record = read_record(project)
    assert record is not None and record.version == NEW_VERSION
    assert record.template == templates.live().digest
    assert record.render == digest(templates.live().render(record.answers))
    load_config(project / "taskscale.toml")

    # The next update starts from here: once the conflicts are resolved, nothing is left to do.
    (project / "app" / "models.py").write_text('NAME = "task"\nLIMIT = 75\n')
    (project / "static" / "icon.bin.template").unlink()
    before = snapshot(project)
    result = run_cli("update", "--project", str(project), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["files"] == []
    assert snapshot(project) == before


def test_changing_an_answer_goes_through_the_merge(
    run_cli: CliRunner, tmp_path: Path, templates: Catalog
) -> None:
    project = generate(run_cli, tmp_path)
    readme = project / "README.md"
    readme.write_text(readme.read_text().replace("## Usage\n", "## Usage (mine)\n"))
    result = run_cli("update", "--project", str(project), "--answers", "broker=kafka", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert (
        data["from"]["answers"]["broker"] == "redis" and data["to"]["answers"]["broker"] == "kafka"
    )
    text = readme.read_text()
    assert "Events go through Kafka." in text and "## Usage (mine)" in text
    assert 'broker = "kafka"' in (project / "taskscale.toml").read_text()
    assert _env(project / ".env")["BROKER"] == "kafka"
    record = read_record(project)
    assert record is not None and record.answers["broker"] == "kafka"


def test_dry_run_prints_the_diff_and_changes_nothing(
    run_cli: CliRunner, tmp_path: Path, templates: Catalog
) -> None:
    project = generate(run_cli, tmp_path)
    secrets = edit_as_a_user(project)
    before = snapshot(project)
    result = run_cli("update", "--project", str(project), "--dry-run")
    assert result.exit_code == 1  # it would leave conflicts
    assert "+Intro line, improved." in result.stdout
    assert "--- a/app/legacy.py\n+++ /dev/null" in result.stdout
    assert "+++ b/app/new_module.py" in result.stdout
    assert "+REDIS_URL=redis://:****@127.0.0.1:26379/0" in result.stdout
    assert "Binary file static/logo.bin differs" in result.stdout
    for secret in secrets.values():
        assert secret not in result.stdout + result.stderr
    assert snapshot(project) == before
    assert not transaction.stage_dir(project).exists()

    result = run_cli("update", "--project", str(project), "--dry-run", "--json")
    data = json.loads(result.stdout)
    assert data["dry_run"] is True and data["conflicts"] == ["app/models.py", "static/icon.bin"]
    actions = {f["path"]: f["action"] for f in data["files"]}
    assert actions["app/legacy.py"] == "removed" and actions["docs/guide.md"] == "kept-deleted"
    assert actions["app/old_helper.py"] == "kept-changed" and actions["app/crud.py"] == "merged"
    assert snapshot(project) == before


def test_refuses_a_dirty_git_repository_unless_forced(
    run_cli: CliRunner, tmp_path: Path, templates: Catalog
) -> None:
    project = generate(run_cli, tmp_path)
    git = ["git", "-C", str(project)]
    proc.run([*git, "init", "-q", "-b", "main"], timeout=30)
    proc.run([*git, "add", "-A"], timeout=30)
    ident = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
    proc.run(["git", *ident, "-C", str(project), "commit", "-qm", "generated"], timeout=30)
    (project / "app" / "mine.py").write_text("MINE = 1\n")
    before = snapshot(project)
    result = run_cli("update", "--project", str(project))
    assert result.exit_code == 2
    assert "uncommitted changes" in one_error_line(result.stderr)
    assert snapshot(project) == before
    # A dry run changes nothing, so it runs anyway.
    assert run_cli("update", "--project", str(project), "--dry-run").exit_code == 0
    assert snapshot(project) == before
    # Committed, it runs; --force runs regardless.
    proc.run([*git, "add", "-A"], timeout=30)
    proc.run(["git", *ident, "-C", str(project), "commit", "-qm", "mine"], timeout=30)
    assert run_cli("update", "--project", str(project)).exit_code == 0
    assert (project / "app" / "new_module.py").is_file()
    (project / "app" / "mine.py").write_text("MINE = 2\n")
    result = run_cli("update", "--project", str(project), "--answers", "broker=kafka")
    assert result.exit_code == 2
    result = run_cli("update", "--project", str(project), "--answers", "broker=kafka", "--force")
    assert result.exit_code == 0, result.stderr
    assert "Kafka" in (project / "README.md").read_text()


BAD_INPUT = [
    (
        ["--answers", "colour=red"],
        2,
        f"unknown answer 'colour': the answers are {', '.join(answer_keys())}",
    ),
    (
        ["--answers", "broker=rabbitmq"],
        2,
        "invalid value 'rabbitmq' for answer broker: expected one of redis, kafka",
    ),
    (["--answers", "name=Bad_Name"], 2, "invalid project name"),
    (["--answers", "broker"], 2, "expected KEY=VALUE"),
    (["--answers", "broker=kafka", "--answers", "broker=redis"], 2, "given twice"),
]


@pytest.mark.parametrize(("args", "code", "message"), BAD_INPUT)
def test_bad_answers(
    run_cli: CliRunner, tmp_path: Path, templates: Catalog, args: list[str], code: int, message: str
) -> None:
    project = generate(run_cli, tmp_path)
    before = snapshot(project)
    result = run_cli("update", "--project", str(project), *args)
    assert result.exit_code == code
    assert message in one_error_line(result.stderr)
    assert snapshot(project) == before


CORRUPT_RECORDS = [
    ("[template\n", "not valid TOML"),
    ('[answers]\nname = "tasks-api"\n', "expected exactly [template] and [answers]"),
    (
        '[template]\nversion = "0.1.0"\ndigest = "x"\nrender = "sha256:1"\n[answers]\nname = "t"\n',
        "not a sha256 digest",
    ),
    ("[template]\nversion = 1\n[answers]\n", "needs exactly version, digest and render"),
    (None, "invalid value 'rabbitmq' for answer broker"),
    ("unknown-answer", "unknown answer 'colour'"),
]


@pytest.mark.parametrize(("text", "message"), CORRUPT_RECORDS)
def test_corrupt_record(
    run_cli: CliRunner, tmp_path: Path, templates: Catalog, text: str | None, message: str
) -> None:
    project = generate(run_cli, tmp_path)
    record_path = project / RECORD_FILE
    good = record_path.read_text()
    if text is None:
        text = good.replace('broker = "redis"', 'broker = "rabbitmq"')
    elif text == "unknown-answer":
        text = good + 'colour = "red"\n'
    record_path.write_text(text)
    before = snapshot(project)
    result = run_cli("update", "--project", str(project))
    assert result.exit_code == 3
    line = one_error_line(result.stderr)
    assert f"{RECORD_FILE} is corrupt" in line and message in line
    assert snapshot(project) == before


def test_not_a_project_and_no_record(
    run_cli: CliRunner, tmp_path: Path, templates: Catalog
) -> None:
    (tmp_path / "plain").mkdir()
    result = run_cli("update", "--project", str(tmp_path / "plain"))
    assert result.exit_code == 3
    assert "not inside a taskscale project" in one_error_line(result.stderr)
    assert list((tmp_path / "plain").iterdir()) == []

    project = generate(run_cli, tmp_path)
    (project / RECORD_FILE).unlink()
    before = snapshot(project)
    result = run_cli("update", "--project", str(project))
    assert result.exit_code == 3
    line = one_error_line(result.stderr)
    assert "generated before `taskscale update` existed" in line and "--adopt" in line
    assert snapshot(project) == before


def test_unknown_template_or_unreproducible_render(
    run_cli: CliRunner, tmp_path: Path, templates: Catalog
) -> None:
    project = generate(run_cli, tmp_path)
    record = read_record(project)
    assert record is not None
    write_record(
        project, Record(record.version, record.template, "sha256:" + "0" * 64, record.answers)
    )
    before = snapshot(project)
    result = run_cli("update", "--project", str(project))
    assert result.exit_code == 3
    assert "cannot reproduce the pristine render" in one_error_line(result.stderr)
    assert snapshot(project) == before

    write_record(project, Record("0.0.1", "sha256:" + "1" * 64, record.render, record.answers))
    before = snapshot(project)
    result = run_cli("update", "--project", str(project))
    assert result.exit_code == 3
    assert "is not shipped with this taskscale (9.0.0)" in one_error_line(result.stderr)
    assert snapshot(project) == before


def test_adopt_a_project_without_record(
    run_cli: CliRunner, tmp_path: Path, templates: Catalog
) -> None:
    project = generate(run_cli, tmp_path)
    (project / RECORD_FILE).unlink()
    secrets = edit_as_a_user(project)
    result = run_cli("update", "--project", str(project), "--adopt", "--json")
    assert result.exit_code == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["adopted"] is True and data["from"]["version"] == __version__
    assert data["conflicts"] == ["app/models.py", "static/icon.bin"]
    assert not (project / "app" / "legacy.py").exists()
    assert "return x * 2" in (project / "app" / "crud.py").read_text()
    assert {k: v for k, v in _env(project / ".env").items() if k in SECRET_KEYS} == secrets
    record = read_record(project)
    assert record is not None and record.template == templates.live().digest


def test_a_failure_mid_update_leaves_the_project_as_it_was(
    run_cli: CliRunner, tmp_path: Path, templates: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = generate(run_cli, tmp_path)
    edit_as_a_user(project)
    before = snapshot(project)
    fail_on_replace(monkeypatch, 6, OSError(5, "Input/output error"))
    result = run_cli("update", "--project", str(project))
    monkeypatch.undo()
    assert result.exit_code == 1
    assert "Input/output error" in one_error_line(result.stderr)
    assert "the project is as it was" in result.stderr
    assert snapshot(project) == before
    assert not transaction.stage_dir(project).exists()


DRIVER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from taskscale.cli import main
    from taskscale.scaffold import update
    from taskscale.scaffold.releases import Catalog

    project, marker, current, releases = sys.argv[1:5]
    update.default_catalog = lambda: Catalog(Path(current), Path(releases), version="9.0.0")
    real_replace, calls = os.replace, [0]

    def paused_replace(src, dst):
        # After some files are in place, wait for the test's signal (stdin never answers).
        calls[0] += 1
        if calls[0] == 5:
            Path(marker).write_text("paused")
            sys.stdin.readline()
        real_replace(src, dst)

    os.replace = paused_replace
    sys.exit(main(["update", "--project", project]))
    """
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_real_signal_mid_update_leaves_the_project_as_it_was(
    run_cli: CliRunner, tmp_path: Path, templates: Catalog, sig: signal.Signals
) -> None:
    project = generate(run_cli, tmp_path)
    edit_as_a_user(project)
    before = snapshot(project)
    marker = tmp_path / "paused"
    argv = [
        sys.executable,
        "-c",
        DRIVER,
        str(project),
        str(marker),
        str(templates.current),
        str(templates.releases),
    ]
    child = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        paused = proc.poll_until(lambda: marker.exists() or child.poll() is not None, 60)
        assert paused and marker.exists(), child.stderr.read() if child.stderr else "no pause"
        assert snapshot(project) != before  # some files are already replaced
        child.send_signal(sig)
        code = child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
    if sig == signal.SIGINT:
        assert code == 130
        assert snapshot(project) == before
        assert not transaction.stage_dir(project).exists()
    else:
        assert code == -signal.SIGKILL
        # The journal is left: a dry run refuses, the next update restores first, then updates.
        result = run_cli("update", "--project", str(project), "--dry-run")
        assert result.exit_code == 2 and "was interrupted" in one_error_line(result.stderr)
        assert transaction.recover(project) is True
        assert snapshot(project) == before
    result = run_cli("update", "--project", str(project))
    assert result.exit_code == 1  # the conflicts of the fixture, now applied
    assert (project / "app" / "new_module.py").is_file()


def project_of_0_1_0(
    tmp_path: Path, answers: dict[str, str], *, record: bool = True
) -> tuple[Path, Tree, str]:
    """(project, its pristine render, its .env text) as taskscale 0.1.0 wrote it."""
    old = default_catalog().find(V010_TEMPLATE)
    assert old is not None
    base = old.render(answers)
    project = tmp_path / answers["name"]
    for rel, item in base.items():
        path = project / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(item.data)
        path.chmod(0o755 if item.executable else 0o644)
    env_text = env_file_text(project_config(answers, "0.1.0"), generate_secrets())
    (project / ".env").write_text(env_text)
    if record:
        write_record(project, Record("0.1.0", V010_TEMPLATE, digest(base), answers))
    return project, base, env_text


@pytest.mark.parametrize("how", ["record", "adopt"])
def test_real_path_from_the_0_1_0_template_to_the_live_one(
    run_cli: CliRunner, tmp_path: Path, how: str
) -> None:
    """A project as taskscale 0.1.0 (main at 702e492) rendered it, edited, then updated to the
    live template: edits kept, untouched files replaced, code compiles, config loads."""
    catalog = default_catalog()
    answers = {"name": "tasks-api", "broker": "kafka"}
    project, base, env_text = project_of_0_1_0(tmp_path, answers, record=how == "record")

    toml = project / "taskscale.toml"
    toml.write_text(toml.read_text().replace("api = 8080", "api = 18080"))
    (project / "app" / "extra.py").write_text('"""Mine."""\n\nEXTRA = 1\n')
    (project / "loadtest" / "locustfile.py").unlink()
    edited = {"taskscale.toml", "app/extra.py", "loadtest/locustfile.py"}

    args = ["update", "--project", str(project), "--json"]
    result = (
        run_cli(*args, "--adopt", "--answers", "name=tasks-api")
        if how == "adopt"
        else run_cli(*args)
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["conflicts"] == []

    live = catalog.live().render(answers)
    for rel, item in live.items():
        if rel in edited:
            continue
        # Untouched by the user: as the template has it now (replaced, added or unchanged).
        assert (project / rel).read_bytes() == item.data, rel
    for rel in set(base) - set(live) - edited:
        assert not (project / rel).exists(), rel
    for path in project.rglob("*.py"):
        compile(path.read_text(encoding="utf-8"), str(path), "exec")
    for path in project.rglob("*"):
        if path.is_file() and path.suffix in (".py", ".toml", ".md", ".yml", ".yaml", ".jinja"):
            assert "<<<<<<< yours" not in path.read_text(encoding="utf-8"), path
    config = load_config(toml)
    assert config.ports.api == 18080 and config.project.broker == "kafka"
    # Issue 15's moves: compose.yaml at the root replaces the untouched deploy/docker-compose.yml,
    # the Locust manifests become a component, the migrate Job goes; the image is pinned.
    actions = {f["path"]: f["action"] for f in data["files"]}
    assert actions["deploy/docker-compose.yml"] == "removed"
    assert actions["compose.yaml"] == "added"
    assert actions["deploy/k8s/base/locust.yaml"] == "removed"
    assert actions["deploy/k8s/base/migrate-job.yaml"] == "removed"
    assert actions["deploy/k8s/components/loadtest/locust.yaml"] == "added"
    assert actions["uv.lock"] == "added"
    assert not (project / "deploy" / "docker-compose.yml").exists()
    assert config.images.app == "tasks-api-app:0.1.0" and config.images.worker is None
    assert (project / "app" / "extra.py").read_text() == '"""Mine."""\n\nEXTRA = 1\n'
    assert (
        not (project / "loadtest" / "locustfile.py").exists()
        or "loadtest/locustfile.py" not in base
    )
    env = _env(project / ".env")
    assert {k: env.get(k) for k in _env_from(env_text)} == _env_from(env_text)
    record = read_record(project)
    assert record is not None and record.template == catalog.live().digest
    assert record.render == digest(live)


def _env_from(text: str) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )


def test_switching_the_real_template_to_kafka_keeps_a_readme_edit(
    run_cli: CliRunner, tmp_path: Path
) -> None:
    """The issue's example on the live template: an edited README keeps its edit and gains the
    Kafka wording; the Kafka manifests and compose service come in."""
    project = generate(run_cli, tmp_path)
    readme = project / "README.md"
    readme.write_text(readme.read_text() + "\n## Our notes\nOn call: the platform team.\n")
    result = run_cli("update", "--project", str(project), "--answers", "broker=kafka")
    assert result.exit_code == 0, result.stderr
    text = readme.read_text()
    assert "On call: the platform team." in text
    assert "Kafka broker, Prometheus metrics" in text and "Redis Streams broker" not in text
    kustomization = (project / "deploy" / "k8s" / "base" / "kustomization.yaml").read_text()
    assert "- kafka.yaml" in kustomization
    assert "\n  kafka:\n" in (project / "compose.yaml").read_text()
    assert load_config(project / "taskscale.toml").project.broker == "kafka"
    assert _env(project / ".env")["BROKER"] == "kafka"


def test_an_edited_old_compose_file_is_kept_next_to_the_new_one(
    run_cli: CliRunner, tmp_path: Path
) -> None:
    """The template moved deploy/docker-compose.yml to compose.yaml: a user's edits are not
    deleted (kept-changed), compose.yaml arrives, and the compose target says which one it uses."""
    project, _, _ = project_of_0_1_0(tmp_path, {"name": "tasks-api", "broker": "redis"})
    old_compose = project / "deploy" / "docker-compose.yml"
    old_compose.write_text(old_compose.read_text() + "# ours: a sidecar\n")

    result = run_cli("update", "--project", str(project), "--json")
    assert result.exit_code == 0, result.stderr
    actions = {f["path"]: f["action"] for f in json.loads(result.stdout)["files"]}
    assert actions["deploy/docker-compose.yml"] == "kept-changed"
    assert actions["compose.yaml"] == "added"
    assert old_compose.read_text().endswith("# ours: a sidecar\n")
    (note,) = ComposeTarget(load_project(project)).file_notes()  # `status` shows it
    assert note.startswith("deploy/docker-compose.yml is not used any more: compose.yaml")
    old_compose.unlink()
    assert ComposeTarget(load_project(project)).file_notes() == []
