"""The error tree: every failure a user can cause or meet is a TaskscaleError.

The CLI has exactly one handler (``taskscale.cli.main``) that prints ``message`` as one line on
stderr and exits with ``exit_code``. Library code raises; it never prints or exits.
"""

from __future__ import annotations


class TaskscaleError(Exception):
    """Base of every user-facing error."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        # Extra lines (e.g. a log tail) shown under the message; never a traceback.
        self.detail = detail

    def __str__(self) -> str:
        return self.message


class UsageError(TaskscaleError):
    """Bad input on the command line (wrong name, out-of-range option, unparsable value)."""

    exit_code = 2


class ConfigError(TaskscaleError):
    """taskscale.toml is missing, unreadable or invalid."""

    exit_code = 3


class ProjectNotFound(ConfigError):
    """No taskscale.toml in the given directory or any parent."""


class TargetExists(UsageError):
    """The output directory is not empty and --force was not given."""


class CommandFailed(TaskscaleError):
    """An external process exited non-zero or timed out."""

    exit_code = 4


class MissingBinary(TaskscaleError):
    """A program taskscale needs (postgres, redis-server, nginx, git, docker) is not available."""

    exit_code = 5


class TargetError(TaskscaleError):
    """A deployment target could not do what was asked (port taken, service not ready, ...)."""

    exit_code = 6


class PortInUse(TargetError):
    """A port the stack needs is already bound by another process."""


class ServiceNotReady(TargetError):
    """A service did not become ready within its timeout."""


class SloFailed(TaskscaleError):
    """A load test ran and its reports were written, but at least one SLO gate failed."""

    exit_code = 1


class UpdateConflicts(TaskscaleError):
    """`taskscale update` was applied, but some files hold conflict markers to resolve."""

    exit_code = 1
