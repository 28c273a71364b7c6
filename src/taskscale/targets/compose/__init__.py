"""The docker compose target (``compose.yaml`` at the project root, on a Docker engine)."""

from taskscale.targets.compose.target import ComposeTarget

__all__ = ["ComposeTarget"]
