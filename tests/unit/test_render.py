"""Every option combination renders into a project whose files are valid: Python compiles and
passes ruff, YAML and TOML parse, and taskscale.toml loads back into the typed config."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jinja2
import pytest
import yaml

from taskscale.config import ProjectConfig, load_config
from taskscale.errors import TaskscaleError
from taskscale.scaffold import NewProjectSpec, create_project, render_tree, template_root
from taskscale.scaffold.new import default_config
from taskscale.scaffold.values import template_context

ANSWERS = [("redis", "jwt"), ("kafka", "jwt"), ("redis", "none"), ("kafka", "none")]
# Files that exist only for --auth jwt (their templates render to nothing with none).
JWT_ONLY = {
    "app/core/security.py",
    "app/api/routes/auth.py",
    "app/api/routes/users.py",
    "app/crud/users.py",
    "app/schemas/users.py",
    "migrations/versions/0002_users.py",
    "tests/test_auth.py",
}


def test_the_guide_to_adding_a_resource_is_generated_for_both_answers(rendered: Path) -> None:
    guide = (rendered / "docs" / "adding-a-resource.md").read_text(encoding="utf-8")
    assert "app/api/routes/notes.py" in guide and 'resource("notes")' in guide


@pytest.fixture(scope="module", params=ANSWERS, ids=lambda a: "-".join(a))
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    broker, auth = request.param
    out = tmp_path_factory.mktemp(f"render-{broker}-{auth}")
    result = create_project(
        NewProjectSpec(name="tasks-api", output_dir=out, broker=broker, auth=auth, git=False)
    )
    return result.path


def test_every_template_is_rendered_or_copied(rendered: Path) -> None:
    sources = {
        p.relative_to(template_root()).as_posix().removesuffix(".jinja")
        for p in template_root().rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    produced = {p.relative_to(rendered).as_posix() for p in rendered.rglob("*") if p.is_file()}
    auth = load_config(rendered / "taskscale.toml").project.auth
    expected = sources if auth == "jwt" else sources - JWT_ONLY
    assert expected <= produced
    assert auth == "jwt" or not produced & JWT_ONLY
    assert not any(name.endswith(".jinja") for name in produced)


def test_python_compiles(rendered: Path) -> None:
    files = sorted(rendered.rglob("*.py"))
    assert files, "the project has Python sources"
    for path in files:
        compile(path.read_text(encoding="utf-8"), str(path), "exec")


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_passes_on_output(rendered: Path, command: list[str]) -> None:
    """Lint-clean and formatted as `ruff format` would write it (the generated CI checks both)."""
    ruff = shutil.which("ruff")
    argv = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    proc = subprocess.run(
        [*argv, *command, "--no-cache", "."],
        cwd=rendered,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_yaml_and_toml_parse(rendered: Path) -> None:
    yamls = [*rendered.rglob("*.yml"), *rendered.rglob("*.yaml")]
    assert yamls, "the project has YAML files (CI workflow)"
    for path in yamls:
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert document is not None, path
    for path in rendered.rglob("*.toml"):
        tomllib.loads(path.read_text(encoding="utf-8"))
    assert isinstance(load_config(rendered / "taskscale.toml"), ProjectConfig)


def test_config_round_trips(rendered: Path) -> None:
    config = load_config(rendered / "taskscale.toml")
    assert config == default_config("tasks-api", config.project.broker, config.project.auth)


def test_templates_rendering_to_nothing_are_not_written(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "always.py.jinja").write_text("x = 1\n")
    (src / "only_jwt.py.jinja").write_text('{% if auth == "jwt" %}y = 2\n{% endif %}')
    assert [p.as_posix() for p in render_tree(src, tmp_path / "a", {"auth": "jwt"})] == [
        "always.py",
        "only_jwt.py",
    ]
    assert [p.as_posix() for p in render_tree(src, tmp_path / "b", {"auth": "none"})] == [
        "always.py"
    ]
    assert not (tmp_path / "b" / "only_jwt.py").exists()


def test_rendering_is_strict_about_undefined_variables(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "x.txt.jinja").write_text("{{ not_defined }}")
    expected = r"x\.txt\.jinja failed to render: 'not_defined' is undefined"
    with pytest.raises(TaskscaleError, match=expected) as info:
        render_tree(src, tmp_path / "out", {})
    assert isinstance(info.value.__cause__, jinja2.UndefinedError)


def test_plain_files_are_copied_verbatim(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("x = '{{ untouched }}'\n")
    (src / "conf.txt.jinja").write_text("name={{ name }}\n")
    written = render_tree(src, tmp_path / "out", {"name": "demo"})
    assert sorted(p.as_posix() for p in written) == ["conf.txt", "pkg/mod.py"]
    assert (tmp_path / "out" / "pkg" / "mod.py").read_text() == "x = '{{ untouched }}'\n"
    assert (tmp_path / "out" / "conf.txt").read_text() == "name=demo\n"


def test_context_has_what_templates_use() -> None:
    context = template_context(default_config("demo", "kafka"))
    assert context["package"] == "demo"
    assert context["broker"] == "kafka"
    assert context["ports"].api == 8080


def test_config_rejects_overlapping_ports(tmp_path: Path) -> None:
    from taskscale.errors import ConfigError

    create_project(NewProjectSpec(name="ports", output_dir=tmp_path, git=False))
    config = tmp_path / "ports" / "taskscale.toml"
    text = config.read_text().replace("api = 8080", "api = 8120", 1)
    config.write_text(text)
    with pytest.raises(ConfigError, match="replicas' range"):
        load_config(config)
