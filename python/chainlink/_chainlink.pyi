"""The native half of chainlink. Use ``chainlink.Chainlink``; this API may change."""

import os
from typing import Any, Callable, List, Mapping, Optional, Sequence, Union

from . import EnvValue, GcReport, StageResult

def gc(workdir: Union[str, "os.PathLike[str]"], cleanup_images: Sequence[str] = ...) -> GcReport:
    """Removes what runs of dead processes left; see ``chainlink.gc``."""

def cancel_runs() -> int:
    """Cancels every run in flight in this process; how many there were."""

def wait_runs(timeout: float) -> bool:
    """Waits (GIL released) until no run is in flight or ``timeout`` seconds have passed;
    whether none is left."""

class Chain:
    """A validated chain whose images are on the engine."""

    def __new__(
        cls,
        stages: Sequence[Mapping[str, Any]],
        workdir: Union[str, "os.PathLike[str]", None] = None,
    ) -> "Chain": ...
    def run(self, environ: Optional[Mapping[str, EnvValue]] = None) -> List[StageResult]: ...
    def start(
        self,
        environ: Optional[Mapping[str, EnvValue]],
        on_done: Callable[[bool, Any], None],
    ) -> "RunHandle":
        """Starts a run; ``on_done(ok, value)`` is called once, from a runtime thread, with the
        list of results (``ok`` true) or the exception."""
    @property
    def workdir(self) -> str: ...
    @property
    def images(self) -> List[str]: ...
    def __len__(self) -> int: ...

class RunHandle:
    """A run started by ``Chain.start``."""

    def cancel(self) -> None:
        """Kills the running container and removes everything the run holds; ``on_done`` then
        gets a ``ChainlinkError``."""
    def done(self) -> bool:
        """Whether the run has ended, its cleanup included."""

def at_exit(timeout: float) -> bool: ...
