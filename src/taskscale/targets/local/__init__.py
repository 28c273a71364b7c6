"""The local target: the whole stack as processes on this machine, from pip wheels."""

from __future__ import annotations

from taskscale.targets.local.target import LocalTarget

__all__ = ["LocalTarget"]
