"""Task request and response models. They validate input and document the API (OpenAPI at
/docs); the routes return JSON bytes built by app/crud/tasks.py, in exactly the TaskOut shape."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from app.schemas.common import StorableText


class TaskStatus(StrEnum):
    pending = "pending"
    in_progress = "in_progress"
    done = "done"


Title = Annotated[str, Field(min_length=1, max_length=200), StorableText]
Description = Annotated[str, Field(max_length=10_000), StorableText]


class TaskCreate(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=False)

    title: Title
    description: Description | None = None
    status: TaskStatus = TaskStatus.pending


class TaskUpdate(BaseModel):
    """Only the fields sent change. ``title`` and ``status`` may be left out but not set to null
    (the schema says so: ``SkipJsonSchema`` keeps the internal ``None`` default out of it);
    ``description: null`` clears the description."""

    model_config = ConfigDict(extra="forbid")

    title: Title | SkipJsonSchema[None] = None
    description: Description | None = None
    status: TaskStatus | SkipJsonSchema[None] = None

    @field_validator("title", "status")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Runs only for values sent in the body (defaults are not validated).
        if value is None:
            raise ValueError("must not be null")
        return value


class TaskOut(BaseModel):
    id: int
    title: str
    description: str | None
    status: TaskStatus
    created_at: datetime
    updated_at: datetime
