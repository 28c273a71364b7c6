"""Pieces every resource's schemas use: id bounds, text PostgreSQL can store, the error body."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from pydantic import AfterValidator, BaseModel

MAX_BIGINT = 2**63 - 1

# A path id that fits PostgreSQL's bigint: anything else is a 422 before any query.
ItemId = Annotated[int, Path(ge=1, le=MAX_BIGINT, description="Id (bigint)")]


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


StorableText = AfterValidator(_storable_text)


class ErrorDetail(BaseModel):
    """Every error except validation (422): ``{"detail": "what went wrong"}``."""

    detail: str
