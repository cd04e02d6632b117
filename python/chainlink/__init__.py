"""chainlink runs Docker containers in sequence.

A chain is a list of stages, each a container with its own image, entrypoint, environment,
memory cap, CPU set, networking, privilege, hostname and timeout. One fresh directory is mounted
at ``/job`` in every stage of a run, so stages pass files along. The first stage that fails
stops the chain; a run returns one result per stage, skipped stages included.

    from chainlink import Chainlink

    chain = Chainlink([
        {"image": "alpine:3.5", "entrypoint": ["sh", "-c", "echo hi > /job/greeting"]},
        {"image": "alpine:3.5", "entrypoint": ["cat", "/job/greeting"]},
    ], workdir="/tmp")
    results = chain.run()
    assert all(r["success"] for r in results)

The work is done by a native library (Rust, on a tokio runtime shared by the process): runs
release the GIL, runs awaited together with ``asyncio.gather`` go on at the same time, and
everything a run creates (its containers, its ``/job`` directory) is removed on every path,
Ctrl-C and task cancellation included.

SIGTERM (what service managers send to stop a process): when a run starts (``run()`` or
``run_async()``) on the main thread while SIGTERM has its default disposition, chainlink
installs a handler of its own, once per process. On SIGTERM it cancels every run in flight in
the process (any thread, any event loop), waits up to 10 seconds for their cleanup (containers
killed and removed, ``/job`` directories removed), then restores the default disposition and
sends SIGTERM to the process again: the process still dies by SIGTERM (exit status -15, or 143
in a shell), as it would have without chainlink, only with nothing left behind. It does not:

- replace a SIGTERM handler the program set itself, or an ignored SIGTERM (the program's
  handler decides; an exception it raises during ``run()`` stops the run and cleans up, as
  Ctrl-C does);
- come into play in a program that runs chains only from other threads (Python lets only the
  main thread set signal handlers): such a program should set its own handler, for example
  one that raises ``SystemExit`` in the main thread, and cancel its runs from there;
- run while the main thread is stuck in code that does not return to Python (Python runs
  signal handlers only between bytecodes on the main thread);
- help against SIGKILL (the out-of-memory killer, ``kill -9``, a container runtime's last
  resort), which no code survives: the containers keep running and the directories stay until
  the next sweep, ``chainlink.gc()`` or a ``chainlink run``, kills and removes them once their
  owner is provably dead.

``gc(workdir)`` is that sweep: it removes what runs of dead processes left and says what it
removed and what it could not.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import signal
import threading
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, TypedDict, Union

from . import _chainlink
from ._chainlink import Chain as _Chain
from ._errors import ChainlinkError, CleanupWarning, EngineError, EngineUnavailable, ImageNotFound, InvalidStage

__all__ = [
    "Chainlink",
    "ChainlinkError",
    "CleanupWarning",
    "EngineError",
    "EngineUnavailable",
    "GcReport",
    "ImageNotFound",
    "InvalidStage",
    "Logs",
    "StageResult",
    "gc",
]

try:
    from importlib.metadata import PackageNotFoundError, version as _version

    try:
        __version__ = _version("chainlink")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        __version__ = "0+unknown"
except ImportError:  # pragma: no cover
    __version__ = "0+unknown"

#: What ``env`` and ``environ`` values may be; ``int``, ``float`` and ``bool`` become
#: ``str(value)`` (``True`` becomes ``"True"``).
EnvValue = Union[str, int, float, bool]


class Logs(TypedDict):
    """A stage's output with the engine's timestamps; ``None`` when the stage has
    ``"logs": False``, ``b""`` for a skipped stage."""

    stdout: Optional[bytes]
    stderr: Optional[bytes]


class StageResult(TypedDict):
    """What one stage of a run produced."""

    #: The container's inspected ``State`` just before its removal; ``None`` when skipped.
    data: Optional[Dict[str, Any]]
    #: Whether the stage's timeout killed it.
    killed: bool
    logs: Logs
    #: Exit code 0 and not killed.
    success: bool
    #: The stage did not run because an earlier stage failed.
    skipped: bool
    #: Some output went over the stage's ``output_limit`` and was dropped.
    truncated: bool


class GcReport(TypedDict):
    """What :func:`gc` removed, and what it could not."""

    #: Ids of the containers removed.
    containers: List[str]
    #: Run directories removed.
    directories: List[str]
    #: One ``"what: why"`` line for each thing that could not be removed.
    failures: List[str]


def gc(
    workdir: Union[str, "os.PathLike[str]"] = "/tmp",
    *,
    cleanup_images: Iterable[str] = (),
) -> GcReport:
    """Removes what finished runs left: every chainlink container on the engine whose run is
    provably over, and every run directory under ``workdir`` whose lock no live runner holds.
    Nothing of a live run is touched, whatever process, PID namespace, container or host runs
    it: a run is over when its lock (held by its runner for the run's life, released by the
    kernel when the runner dies, SIGKILL included) can be taken, or, where its directory cannot
    be seen from here (another machine, another user), once the deadline in its container's
    labels (its stage's timeout plus slack) has passed. Running containers of dead runners are
    killed. See docs/cleanup.md.

    A directory holding files this user may not remove (a stage running as root wrote them) is
    emptied by a short root container of the first of ``cleanup_images`` that works (an image
    with ``rm``), then of images of chainlink containers found on the engine.

    Returns a dict: ``containers`` (ids removed), ``directories`` (paths removed) and
    ``failures`` (``"what: why"`` for each thing that could not be removed; the sweep goes on
    past each). Blocks with the GIL released. Raises ``InvalidStage`` when ``workdir`` is not an
    existing directory, ``EngineUnavailable`` when the engine cannot be reached and
    ``EngineError`` when it cannot list its containers.
    """
    images = [cleanup_images] if isinstance(cleanup_images, str) else list(cleanup_images)
    return _chainlink.gc(os.fspath(workdir), images)  # type: ignore[return-value]


#: How long the interpreter's exit waits for runs still in flight to be cancelled and cleaned up.
_EXIT_CLEANUP_SECONDS = 10.0

# Before the interpreter finalizes: no runtime thread may enter it any more, and the runs still
# in flight are stopped and cleaned up (their containers and directories removed).
atexit.register(_chainlink.at_exit, _EXIT_CLEANUP_SECONDS)

#: How long the SIGTERM handler waits for the runs it cancelled to clean up.
_SIGTERM_CLEANUP_SECONDS = 10.0
_sigterm_lock = threading.Lock()
_sigterm_looked = False


def _on_sigterm(signum: int, frame: Any) -> None:
    """chainlink's SIGTERM handler: stop every run, wait for its cleanup, die by SIGTERM."""
    try:
        if _chainlink.cancel_runs():
            _chainlink.wait_runs(_SIGTERM_CLEANUP_SECONDS)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _watch_sigterm() -> None:
    """Installs :func:`_on_sigterm` the first time a run starts on the main thread, if SIGTERM
    then has its default disposition; never again after that first look, so a program that
    later sets SIGTERM (back to the default included) keeps what it set."""
    global _sigterm_looked
    if _sigterm_looked or threading.current_thread() is not threading.main_thread():
        return
    with _sigterm_lock:
        if _sigterm_looked:
            return
        _sigterm_looked = True
        try:
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError):  # pragma: no cover - not the main interpreter
            pass


class Chainlink:
    """A chain of stages, validated and with every image on the engine.

    ``stages`` is a list of dicts with the keys ``image`` (required), ``entrypoint``,
    ``hostname``, ``memory``, ``cpuset_cpus``, ``networking``, ``privileged``, ``timeout``,
    ``logs`` and ``env``, and the extra keys ``pids_limit``, ``cpus``, ``user``, ``read_only``,
    ``cap_add``, ``cap_drop``, ``no_new_privileges``, ``ulimits``, ``tmpfs``, ``runtime``,
    ``tty`` and ``output_limit``. Each run's ``/job`` directory is made under ``workdir``.

    The images of all stages are pulled in parallel during construction; an image that cannot
    be pulled but is on the engine is used as it is.

    Raises ``InvalidStage`` (a ``ValueError``) listing every problem of the input,
    ``TypeError`` for an ``env`` value that is not ``str``, ``int``, ``float`` or ``bool``,
    ``ImageNotFound`` when an image can be neither pulled nor found, and ``EngineUnavailable``
    when the Docker engine cannot be reached.
    """

    def __init__(
        self,
        stages: Sequence[Mapping[str, Any]],
        workdir: Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"] = "/tmp",
    ) -> None:
        # As open() takes paths: bytes become str the filesystem's way (undecodable bytes as
        # surrogates, which the native side turns back into the same bytes).
        self._chain = _Chain(stages, os.fsdecode(workdir))

    @property
    def workdir(self) -> str:
        """The directory under which each run's ``/job`` directory is made."""
        return os.fspath(self._chain.workdir)

    @property
    def images(self) -> List[str]:
        """The distinct images of the chain, in stage order."""
        return self._chain.images

    def __len__(self) -> int:
        return len(self._chain)

    def __repr__(self) -> str:
        return f"<Chainlink of {len(self)} stage(s), workdir={self.workdir!r}>"

    def run(self, environ: Optional[Mapping[str, EnvValue]] = None) -> List[StageResult]:
        """Runs the stages in sequence, each with ``environ`` under its own ``env``, and returns
        one result per stage. A stage that fails (non-zero exit, timeout) stops the chain: the
        stages after it are returned with ``skipped`` true.

        Blocks with the GIL released; needs no event loop. On Ctrl-C the running container is
        killed and everything the run made is removed before ``KeyboardInterrupt`` propagates.
        Raises ``EngineError`` (with the finished stages' ``results``) if the engine fails.
        On SIGTERM the run is stopped and cleaned up as the module's docstring says.
        """
        _watch_sigterm()
        return self._chain.run(environ)

    async def run_async(self, environ: Optional[Mapping[str, EnvValue]] = None) -> List[StageResult]:
        """As :meth:`run`, awaitable on the running asyncio loop. Runs awaited together (for
        example with ``asyncio.gather``) go on at the same time.

        When the awaiting task is cancelled, the running container is killed and everything the
        run made is removed before ``CancelledError`` propagates. On SIGTERM the run is stopped
        and cleaned up as the module's docstring says.
        """
        _watch_sigterm()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[List[StageResult]] = loop.create_future()
        handle = self._chain.start(environ, functools.partial(_deliver, loop, future))
        try:
            # Shielded: a cancelled task must not cancel `future`, which reports the end of the
            # cleanup that the cancellation starts.
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            handle.cancel()
            while not future.done():
                try:
                    await asyncio.shield(future)
                except asyncio.CancelledError:
                    continue  # cancelled again: the cleanup still has to finish
                except BaseException:
                    break  # the run ended with its "cancelled" error: expected
            if not future.cancelled() and future.done():
                future.exception()  # retrieved, so asyncio does not log it
            raise
        except BaseException:
            # Not a cancellation (the coroutine was closed, or a KeyboardInterrupt went through
            # the loop): stop the run; its cleanup finishes on the runtime's threads.
            handle.cancel()
            raise


def _deliver(loop: asyncio.AbstractEventLoop, future: "asyncio.Future[Any]", ok: bool, value: Any) -> None:
    """Called once from a runtime thread when a run started by ``run_async`` ends."""
    try:
        loop.call_soon_threadsafe(_settle, future, ok, value)
    except RuntimeError:
        pass  # the loop is closed: nobody awaits the run any more


def _settle(future: "asyncio.Future[Any]", ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
