"""Every external process goes through here: argv lists, a timeout always, output captured.

``run`` waits for a command and raises ``CommandFailed`` (command, exit code, stderr tail) when it
fails or times out. ``spawn`` starts a long-running service detached from our process group with
its output appended to a log file. ``start`` begins a command whose input is written later
(``Started.finish``). ``wait_until`` is the only way to wait for readiness.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskscale.errors import CommandFailed, MissingBinary, ServiceNotReady

TAIL_LINES = 20


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def _display(argv: Sequence[str]) -> str:
    return shlex.join(str(a) for a in argv)


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def file_tail(path: Path, lines: int = TAIL_LINES) -> str | None:
    """The last ``lines`` lines of a log file, read from its end (logs can be large)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            data = fh.read().decode(errors="replace")
    except OSError:
        return None
    return tail(data, lines) or None


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    input_text: str | None = None,
) -> Completed:
    """Run ``argv`` to completion within ``timeout`` seconds and return its captured output.

    Its stdin gets ``input_text`` (nothing by default) and is then closed, so a command that
    unexpectedly reads stdin sees end-of-file instead of waiting on ours.
    """
    with start(argv, timeout=timeout, cwd=cwd, env=env) as started:
        return started.finish(input_text or "", check=check)


def _completed(
    args: list[str], returncode: int, stdout: str, stderr: str, *, check: bool
) -> Completed:
    """The result of a finished command; ``CommandFailed`` when ``check`` and it failed."""
    if check and returncode != 0:
        raise CommandFailed(
            f"command failed (exit {returncode}): {_display(args)}",
            detail=tail(stderr or stdout) or None,
        )
    return Completed(tuple(args), returncode, stdout, stderr)


class Started:
    """A command started now and finished later: its stdin stays open until ``finish``.

    For work that can begin before all of its input is known (the replica launcher imports
    libraries while PostgreSQL starts). The whole life, start to finish, is bounded by the
    ``timeout`` given to ``start``. Use it as a context manager: leaving the block unfinished
    (an error, or the input turned out not to be needed) kills the process and reaps it.
    """

    def __init__(self, args: list[str], popen: subprocess.Popen[str], timeout: float) -> None:
        self.args = args
        self._popen = popen
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout
        self._done = False

    @property
    def pid(self) -> int:
        return self._popen.pid

    def finish(self, input_text: str, *, check: bool = True) -> Completed:
        """Write ``input_text``, close stdin, wait (within the deadline) and collect output."""
        self._done = True
        remaining = max(0.0, self._deadline - time.monotonic())
        try:
            stdout, stderr = self._popen.communicate(input_text, timeout=remaining)
        except subprocess.TimeoutExpired as exc:
            stderr = self._kill()
            raise CommandFailed(
                f"timed out after {self._timeout:g}s: {_display(self.args)}",
                detail=tail(stderr) or None,
            ) from exc
        return _completed(self.args, self._popen.returncode, stdout, stderr, check=check)

    def exchange(self, line: str, timeout: float) -> str:
        """Write one line to the process's stdin and read one line of its stdout, within
        ``timeout`` (a process that serves requests, e.g. the replica launcher serving the
        supervisor). ``CommandFailed`` when it does not answer in time or has exited."""
        stdin, stdout = self._popen.stdin, self._popen.stdout
        if stdin is None or stdout is None:
            raise CommandFailed(f"no pipes to {_display(self.args)}")
        try:
            stdin.write(line.rstrip("\n") + "\n")
            stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise CommandFailed(f"exited: {_display(self.args)}") from exc
        deadline = min(time.monotonic() + timeout, self._deadline)
        fd = stdout.fileno()
        data = b""
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CommandFailed(f"no answer within {timeout:g}s: {_display(self.args)}")
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise CommandFailed(f"exited: {_display(self.args)}")
            data += chunk
        return data.decode(errors="replace")

    def running(self) -> bool:
        return not self._done and self._popen.poll() is None and time.monotonic() < self._deadline

    def cancel(self) -> None:
        """Kill the process (if still running) and reap it."""
        self._done = True
        self._kill()

    def _kill(self) -> str:
        """Kill and reap; whatever it wrote to stderr."""
        if self._popen.poll() is None:
            self._popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired, OSError, ValueError):
            return self._popen.communicate(timeout=5.0)[1] or ""
        return ""

    def __enter__(self) -> Started:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._done:
            self.cancel()


def start(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Started:
    """Start ``argv`` with pipes for stdin/stdout/stderr; ``Started.finish`` completes it."""
    args = [os.fspath(a) for a in argv]
    popen: subprocess.Popen[str] = _popen(
        args,
        cwd,
        env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Started(args, popen, timeout)


def _popen(
    args: list[str],
    cwd: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    **options: Any,
) -> Any:
    """``subprocess.Popen`` with a missing program or directory as one clear error."""
    try:
        return subprocess.Popen(
            args, cwd=cwd, env=dict(env) if env is not None else None, close_fds=True, **options
        )
    except FileNotFoundError as exc:
        if cwd is not None and not os.path.isdir(cwd):
            raise CommandFailed(f"working directory not found: {os.fspath(cwd)}") from exc
        raise MissingBinary(f"program not found: {args[0]}") from exc


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log_path: Path,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Start a service in its own session (it outlives us), output appended to ``log_path``.

    Returns the pid. The child is reaped by init once we exit; while we live, callers stop it
    through ``terminate``.
    """
    args = [os.fspath(a) for a in argv]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        child: subprocess.Popen[bytes] = _popen(
            args,
            cwd,
            env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _children[child.pid] = child
    return child.pid


# Popen objects of children we spawned in this process, so they can be reaped (no zombies
# that would look alive to pid checks).
_children: dict[int, subprocess.Popen[bytes]] = {}


def reap_children() -> dict[int, int]:
    """Reap every child of this process that has exited (orphans adopted by a subreaper
    included): pid -> exit code, negative for the signal that ended it (as ``Popen``)."""
    reaped: dict[int, int] = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        reaped[pid] = os.waitstatus_to_exitcode(status)
        _children.pop(pid, None)
    return reaped


def describe_exit(code: int | None) -> str:
    """``exit 1``, ``SIGKILL``..., or ``unknown`` (the process was not our child)."""
    if code is None:
        return "unknown"
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


def pid_alive(pid: int) -> bool:
    """True when ``pid`` is a running (not zombie) process."""
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat_fields(pid)
    return fields is None or fields[0] not in {"Z", "X"}


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after ``pid (comm)``: state is [0], utime [11], stime [12]
    (proc(5)); None without /proc or when the process is gone."""
    try:
        # os.read rather than open(): half the cost, and telemetry reads every process of the
        # stack each second.
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        fields = data.rsplit(b")", 1)[1].decode("ascii", "replace").split()
    except (OSError, IndexError):
        return None
    return fields or None


def children_by_parent() -> dict[int, list[int]]:
    """Every process on the machine by its parent's pid: one read of /proc/PID/stat each (a
    third of what psutil's ``process_iter`` costs), psutil where there is no /proc."""
    found: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        names = []
    for name in names:
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is not None and len(fields) > 1 and fields[1].isdigit():
            found.setdefault(int(fields[1]), []).append(int(name))
    if found:
        return found
    import psutil  # not at import time: the CLI starts without it

    for process in psutil.process_iter(["ppid"]):
        found.setdefault(process.info["ppid"], []).append(process.pid)
    return found


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds ``pid`` has used: one read of /proc/PID/stat (a telemetry
    sample reads every process of the stack each second; psutil's per-process reading costs
    about four times as much), psutil where there is no /proc; None when it is gone."""
    fields = _stat_fields(pid)
    if fields is not None:
        try:
            return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
        except (IndexError, ValueError):
            return None
    import psutil  # not at import time: the CLI starts without it

    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def terminate(pid: int, *, timeout: float, sig: int = signal.SIGTERM) -> bool:
    """Send ``sig`` to ``pid`` (and its process group if it leads one), wait, then SIGKILL.

    Returns True when the process was running.
    """
    if not pid_alive(pid):
        _children.pop(pid, None)
        return False
    _signal(pid, sig)
    if not wait_for_exit(pid, timeout):
        _signal(pid, signal.SIGKILL)
        wait_for_exit(pid, 5.0)
    _children.pop(pid, None)
    return True


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to ``pid``'s process group when it leads one (a service and its children:
    PostgreSQL's backends, nginx's workers), else to ``pid``; a gone process is no error."""
    _signal(pid, sig)


def _signal(pid: int, sig: int) -> None:
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait_for_exit(pid: int, timeout: float) -> bool:
    # pid_alive is cheap (a signal 0 and a /proc read): poll often so stops are not rounded up.
    return poll_until(lambda: not pid_alive(pid), timeout, max_interval=0.05)


def poll_until(
    check: Callable[[], bool],
    timeout: float,
    interval: float = 0.02,
    max_interval: float = 0.25,
) -> bool:
    """Call ``check`` until it returns True or ``timeout`` passes; return its last verdict.

    The interval grows gently (x1.5, capped at ``max_interval``) so fast checks answer fast.
    """
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        now = time.monotonic()
        if now >= deadline:
            return False
        time.sleep(min(interval, deadline - now))
        interval = min(interval * 1.5, max_interval)


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    log_path: Path | None = None,
    max_interval: float = 0.25,
) -> None:
    """Wait for ``check`` or raise ``ServiceNotReady`` naming ``what`` with its log tail."""
    if poll_until(check, timeout, max_interval=max_interval):
        return
    detail = file_tail(log_path) if log_path is not None else None
    raise ServiceNotReady(f"{what} did not become ready within {timeout:g}s", detail=detail)
