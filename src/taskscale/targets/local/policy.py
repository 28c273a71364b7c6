"""The local target's restart policy, as pure decisions: restart now, after a back-off, or give up.

A service that exits on its own is started again at once the first time; every further restart
within ``window`` seconds waits twice as long as the one before (``backoff_base``, then x2, at
most ``backoff_max``); ``max_restarts`` restarts within the window make a crash loop, and the
policy gives up until a person runs ``taskscale up``. Restarts older than the window are
forgotten, so a service that crashes once a day is restarted at once every time.

Nothing here touches a process or a file: ``daemon`` applies the decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from taskscale.config import RestartSection

Action = Literal["restart", "wait", "give-up"]


@dataclass(frozen=True)
class Decision:
    action: Action
    # When the restart is due (epoch seconds); the exit time itself for an immediate restart.
    due: float
    # Restarts of this service within the window before this one.
    recent: int


@dataclass(frozen=True)
class RestartPolicy:
    enabled: bool = True
    max_restarts: int = 5
    window: float = 60.0
    backoff_base: float = 0.5
    backoff_max: float = 10.0

    @classmethod
    def from_config(cls, section: RestartSection) -> RestartPolicy:
        return cls(
            enabled=section.policy == "always",
            max_restarts=section.max_restarts,
            window=section.window_seconds,
            backoff_max=section.backoff_max_seconds,
        )

    def recent(self, restart_times: list[float], now: float) -> list[float]:
        """The restarts that still count (within the window before ``now``)."""
        return [t for t in restart_times if now - t < self.window]

    def delay(self, recent: int) -> float:
        """Back-off before the restart that follows ``recent`` restarts within the window."""
        if recent <= 0:
            return 0.0
        return float(min(self.backoff_max, self.backoff_base * 2 ** (recent - 1)))

    def decide(self, restart_times: list[float], exited_at: float) -> Decision:
        """What to do about a service that exited at ``exited_at`` after ``restart_times``."""
        recent = len(self.recent(restart_times, exited_at))
        if recent >= self.max_restarts:
            return Decision("give-up", exited_at, recent)
        delay = self.delay(recent)
        return Decision("wait" if delay > 0 else "restart", exited_at + delay, recent)

    def to_argv(self) -> list[str]:
        """The policy as options of the supervisor process (``daemon``)."""
        return [
            "--max-restarts", str(self.max_restarts),
            "--window", repr(self.window),
            "--backoff-base", repr(self.backoff_base),
            "--backoff-max", repr(self.backoff_max),
        ]  # fmt: skip
