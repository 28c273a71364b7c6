"""The docker compose target (``deploy/docker-compose.yml`` on a Docker engine)."""

from taskscale.targets.compose.target import ComposeTarget

__all__ = ["ComposeTarget"]
