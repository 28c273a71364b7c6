"""The closed sets of values a user chooses from, in a module with no dependencies: the CLI
declares its options with them before anything heavy (pydantic, the targets) is imported."""

from __future__ import annotations

from typing import Literal

Broker = Literal["redis", "kafka"]
# jwt: bearer tokens and per-user tasks; none: the tutorial's open API.
Auth = Literal["jwt", "none"]
