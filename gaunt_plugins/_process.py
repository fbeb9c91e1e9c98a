"""Child processes under supervision: own process group, killed with the parent, timeout, Ctrl-C, peak memory.

Used by ``gaunt-compare`` and by the benchmarks (which load this file by path: it needs only the standard
library). Every child is started by :func:`spawn`:

- in its own session (and so its own process group), so the terminal's Ctrl-C reaches only the
  parent, which decides what to do, and the child and everything it started can be stopped together
  (:func:`stop`: SIGTERM to the group, then SIGKILL after a grace period);
- with a parent-death signal on Linux (``prctl(PR_SET_PDEATHSIG, SIGKILL)``), so a child never
  outlives its parent, even one killed with SIGKILL, which it cannot handle.

:func:`run` is :func:`subprocess.run` on top of these: on a timeout or any exception in the parent the
child's whole group is stopped. :class:`JobProcess` is ``gaunt-compare``'s training run: the first
Ctrl-C (or SIGTERM, counted by :class:`Interrupts`) asks the child to stop after its current epoch
(SIGTERM to the child, see :mod:`gaunt_plugins.compare._budget`); a second one, or a hard timeout's grace
period, kills its process group. Its ``peak_rss_mib`` comes from ``os.wait4``: the peak resident set size
of the child process itself (``ru_maxrss``), whatever way it ended.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

__all__ = ["spawn", "stop", "run", "Job", "ProcessResult", "Interrupts", "JobProcess", "child_env", "python_cmd",
           "tail", "error_summary", "die_with_parent"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _libc_prctl():
    """libc's ``prctl`` (``None`` off Linux or where libc cannot be loaded)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(parent_pid: int, prctl=None):
    """A ``preexec_fn`` for :class:`subprocess.Popen`: the child is killed (SIGKILL) when the
    process ``parent_pid`` dies. Linux only (elsewhere a no-op). If the parent died between the
    fork and this call, the signal would never come, so the child then exits at once."""
    prctl = prctl if prctl is not None else _libc_prctl()

    def preexec() -> None:
        if prctl is None:
            return
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(137)

    return preexec


@dataclass
class Job:
    """A command to run: ``cmd`` in ``cwd`` with ``env``, output to ``log``."""

    cmd: List[str]
    cwd: Path
    env: Dict[str, str]
    log: Path
    timeout_s: Optional[float] = None
    label: str = ""


@dataclass
class ProcessResult:
    returncode: Optional[int]
    wall_s: float
    peak_rss_mib: Optional[float]
    user_cpu_s: Optional[float] = None
    system_cpu_s: Optional[float] = None
    interrupted: bool = False  # by the user (Ctrl-C / SIGTERM to gaunt-compare)
    timed_out: bool = False
    killed: bool = False  # needed SIGKILL
    signal: Optional[int] = None
    notes: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not (self.interrupted or self.timed_out)


class Interrupts:
    """Counts Ctrl-C / SIGTERM received by this process while installed (a context manager)."""

    def __init__(self):
        self.count = 0
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: no handlers, Ctrl-C acts as usual
                pass
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
        return False

    def _handler(self, signum, frame):  # noqa: ARG002
        self.count += 1
        name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        if self.count == 1:
            print(f"\n[gaunt-compare] {name}: stopping the running variant after its current epoch "
                  f"(again to kill it); variants not started yet are skipped", file=sys.stderr, flush=True)
        else:
            print(f"\n[gaunt-compare] {name} again: killing the running process", file=sys.stderr, flush=True)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _kill_group(pid: int) -> None:
    """SIGKILL to the child and everything it started (its process group: the child leads its own
    session); only called while the child has not been reaped, so the group is still its own."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        _signal(pid, signal.SIGKILL)


_PRCTL = _libc_prctl()  # looked up here, not in the forked child


def spawn(cmd: Sequence[str], own_group: bool = True, **popen_kwargs) -> subprocess.Popen:
    """:class:`subprocess.Popen` (same arguments), killed when this process dies; in a new session
    (its own process group) unless ``own_group`` is false: then it stays in this process's group and
    gets the terminal's Ctrl-C itself (for children waited on by worker threads, which Ctrl-C's
    ``KeyboardInterrupt`` in the main thread does not reach)."""
    return subprocess.Popen(cmd, start_new_session=own_group, preexec_fn=die_with_parent(os.getpid(), _PRCTL),
                            **popen_kwargs)


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop ``proc`` (started by :func:`spawn`) and everything it started: SIGTERM to its process
    group, SIGKILL to the group ``grace_s`` later if it has not ended (at once when ``grace_s`` is 0);
    ``proc`` is reaped. A child without a group of its own gets the signals alone."""
    if proc.returncode is not None:  # reaped already: its pid (and group id) may be another's by now
        return
    if grace_s > 0:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            _signal(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            pass
    _kill_group(proc.pid)
    proc.wait()


def run(cmd: Sequence[str], *, timeout: Optional[float] = None, grace_s: float = 0.0, check: bool = False,
        capture_output: bool = False, input=None, **popen_kwargs) -> subprocess.CompletedProcess:
    """:func:`subprocess.run` with the child from :func:`spawn`: past ``timeout`` its process group is
    stopped (:func:`stop` with ``grace_s``) and :class:`subprocess.TimeoutExpired` raised; any other
    exception here (Ctrl-C) kills the group first."""
    if capture_output:
        popen_kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if input is not None:
        popen_kwargs["stdin"] = subprocess.PIPE
    with spawn(cmd, **popen_kwargs) as proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(proc, grace_s)
            proc.communicate()
            raise subprocess.TimeoutExpired(cmd, timeout) from None
        except BaseException:
            stop(proc, 0.0)
            raise
    if check and proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd, out, err)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


class JobProcess:
    """One started :class:`Job`: :meth:`poll` until it returns ``True``; then :attr:`result` is final.

    A hard timeout (``job.timeout_s``) and :meth:`interrupt` send SIGTERM (the child stops after
    its current epoch); a second :meth:`interrupt`, or ``grace_s`` after the SIGTERM, SIGKILL.
    """

    def __init__(self, job: Job, grace_s: float = 120.0):
        self.job = job
        self.grace_s = grace_s
        job.log.parent.mkdir(parents=True, exist_ok=True)
        self.start = time.time()
        with open(job.log, "wb") as log:
            log.write(f"$ {' '.join(job.cmd)}\n".encode())
            log.flush()
            self.proc = spawn(job.cmd, cwd=str(job.cwd), env=job.env, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)
        self.result = ProcessResult(returncode=None, wall_s=0.0, peak_rss_mib=None)
        self._termed_at: Optional[float] = None
        self.done = False

    def elapsed(self) -> float:
        return time.time() - self.start

    def interrupt(self, times: int = 1) -> None:
        """The user's Ctrl-C, ``times`` of them: stop after the current epoch, then kill."""
        if self.done or times <= 0:
            return
        self.result.interrupted = True
        if self._termed_at is None:
            _signal(self.proc.pid, signal.SIGTERM)
            self._termed_at = time.time()
            times -= 1
        if times > 0 and not self.result.killed:
            _kill_group(self.proc.pid)
            self.result.killed = True

    def poll(self) -> bool:
        """Whether the process has ended (timeouts and the SIGKILL grace are applied here)."""
        if self.done:
            return True
        pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
        now = time.time()
        if pid != self.proc.pid:
            timeout = self.job.timeout_s
            if timeout is not None and now - self.start > timeout and not self.result.timed_out:
                self.result.timed_out = True
                self.result.notes.append(f"hard timeout after {timeout:.0f} s")
                if self._termed_at is None:
                    _signal(self.proc.pid, signal.SIGTERM)
                    self._termed_at = now
            if self._termed_at is not None and now - self._termed_at > self.grace_s and not self.result.killed:
                _kill_group(self.proc.pid)
                self.result.killed = True
                self.result.notes.append(f"killed {self.grace_s:.0f} s after SIGTERM")
            return False
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        result = self.result
        result.returncode = self.proc.returncode
        if result.returncode is not None and result.returncode < 0:
            result.signal = -result.returncode
        result.wall_s = now - self.start
        # ru_maxrss: kilobytes on Linux, bytes on macOS
        scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0
        result.peak_rss_mib = usage.ru_maxrss / scale
        result.user_cpu_s = usage.ru_utime
        result.system_cpu_s = usage.ru_stime
        self.done = True
        return True


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a text file ('' if it does not exist)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def error_summary(path: Path) -> str:
    """The most telling line of a failed run's output: the last exception line, else the last line."""
    text = tail(path, 200)
    candidates = [ln for ln in text.splitlines() if ln and not ln.startswith(" ") and ("Error" in ln or "error:" in ln
                                                                                       or "Exception" in ln)]
    if candidates:
        return candidates[-1].strip()
    rest = [ln for ln in text.splitlines() if ln.strip()]
    return rest[-1].strip() if rest else ""


def python_cmd(module: str, *args: str) -> List[str]:
    return [sys.executable, "-m", module, *args]


def child_env(extra: Optional[Dict[str, str]] = None, drop: Sequence[str] = ()) -> Dict[str, str]:
    env = dict(os.environ)
    for key in drop:
        env.pop(key, None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env
