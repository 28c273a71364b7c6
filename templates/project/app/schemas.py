"""Request and response models. Responses on the hot paths are raw JSON bytes; these models
validate input and document the API (OpenAPI at /docs)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

MAX_BIGINT = 2**63 - 1


class TaskStatus(StrEnum):
    pending = "pending"
    in_progress = "in_progress"
    done = "done"


def _storable_text(value: str) -> str:
    # PostgreSQL text cannot hold NUL, and lone surrogates cannot be encoded as UTF-8: both
    # would otherwise surface as a database error (500) instead of a 422.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


Title = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_storable_text)]
Description = Annotated[str, Field(max_length=10_000), AfterValidator(_storable_text)]


class TaskCreate(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=False)

    title: Title
    description: Description | None = None
    status: TaskStatus = TaskStatus.pending


class TaskUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Title | None = None
    description: Description | None = None
    status: TaskStatus | None = None


class TaskOut(BaseModel):
    id: int
    title: str
    description: str | None
    status: TaskStatus
    created_at: datetime
    updated_at: datetime


class Detail(BaseModel):
    detail: str
