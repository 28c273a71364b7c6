"""The answers a project was generated with (``name``, ``broker``, ...): one list, validated.

The answers are the fields of ``[project]`` in ``taskscale.toml`` (``config.ProjectSection``)
except the ones derived from them. Adding a ``taskscale new`` option that changes what the
template renders (``auth``, ...) is one field there: the record, ``taskscale update --answers``
and its validation pick it up from the model, with the field's type as the rule for its values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args, get_origin

from pydantic import TypeAdapter, ValidationError

from taskscale.config import (
    ImagesSection,
    KubernetesSection,
    ProjectConfig,
    ProjectSection,
    check_project_name,
    package_name,
)
from taskscale.errors import TaskscaleError, UsageError

# Fields of [project] that are computed, not asked.
DERIVED_FIELDS = frozenset({"package", "taskscale_version"})
# A new project's version (its pyproject.toml) and so the tag of its images.
PROJECT_VERSION = "0.1.0"

Answers = dict[str, Any]


def answer_keys() -> tuple[str, ...]:
    """Every answer, in the order ``[project]`` declares them."""
    return tuple(key for key in ProjectSection.model_fields if key not in DERIVED_FIELDS)


def defaults() -> Answers:
    """The answers that have a default (every one but ``name``)."""
    fields = ProjectSection.model_fields
    return {
        key: fields[key].default
        for key in answer_keys()
        if not fields[key].is_required() and fields[key].default is not None
    }


def check_answer(key: str, value: Any, *, error: type[TaskscaleError] = UsageError) -> Any:
    """``value`` converted to the answer's type, or ``error`` with one line saying what fits."""
    if key not in answer_keys():
        raise error(f"unknown answer {key!r}: the answers are {', '.join(answer_keys())}")
    annotation = ProjectSection.model_fields[key].annotation
    try:
        checked = TypeAdapter(annotation or Any).validate_python(value)
    except ValidationError as exc:
        if get_origin(annotation) is Literal:
            expected = "one of " + ", ".join(str(choice) for choice in get_args(annotation))
        else:
            expected = exc.errors()[0]["msg"]
        raise error(f"invalid value {value!r} for answer {key}: expected {expected}") from exc
    if key == "name":
        try:
            check_project_name(checked)
        except UsageError as exc:
            raise error(exc.message) from exc
    return checked


def check_answers(
    answers: Mapping[str, Any], *, error: type[TaskscaleError] = UsageError
) -> Answers:
    """Every answer checked, missing ones filled with their defaults (``name`` is required)."""
    checked = {key: check_answer(key, value, error=error) for key, value in answers.items()}
    if "name" not in checked:
        raise error("the answers lack the project's name")
    return {**defaults(), **checked}


def parse_pairs(pairs: Iterable[str]) -> Answers:
    """``["broker=kafka", ...]`` (from ``--answers``) as raw, unchecked answers."""
    parsed: Answers = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"invalid --answers {pair!r}: expected KEY=VALUE (e.g. broker=kafka)")
        if key in parsed:
            raise UsageError(f"answer {key} is given twice")
        parsed[key] = value.strip()
    return parsed


def project_config(answers: Mapping[str, Any], version: str) -> ProjectConfig:
    """The settings a render with ``answers`` starts from (what ``taskscale new`` writes)."""
    name = answers["name"]
    return ProjectConfig(
        project=ProjectSection(package=package_name(name), taskscale_version=version, **answers),
        images=ImagesSection(
            app=f"{name}-app:{PROJECT_VERSION}", loadtest=f"{name}-loadtest:{PROJECT_VERSION}"
        ),
        kubernetes=KubernetesSection(namespace=name),
    )


def answers_of(config: ProjectConfig) -> Answers:
    """The answers recorded in a config's ``[project]`` section."""
    return {key: getattr(config.project, key) for key in answer_keys()}
