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
"""

from __future__ import annotations

import asyncio
import functools
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, TypedDict, Union

from ._chainlink import Chain as _Chain
from ._errors import ChainlinkError, EngineError, EngineUnavailable, ImageNotFound, InvalidStage

__all__ = [
    "Chainlink",
    "ChainlinkError",
    "EngineError",
    "EngineUnavailable",
    "ImageNotFound",
    "InvalidStage",
    "Logs",
    "StageResult",
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
        workdir: Union[str, "os.PathLike[str]"] = "/tmp",
    ) -> None:
        self._chain = _Chain(stages, os.fspath(workdir))

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
        """
        return self._chain.run(environ)

    async def run_async(self, environ: Optional[Mapping[str, EnvValue]] = None) -> List[StageResult]:
        """As :meth:`run`, awaitable on the running asyncio loop. Runs awaited together (for
        example with ``asyncio.gather``) go on at the same time.

        When the awaiting task is cancelled, the running container is killed and everything the
        run made is removed before ``CancelledError`` propagates.
        """
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
