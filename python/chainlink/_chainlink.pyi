"""The native half of chainlink. Use ``chainlink.Chainlink``; this API may change."""

import os
from typing import Any, Callable, List, Mapping, Optional, Sequence, Union

from . import EnvValue, StageResult

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
