"""The exceptions chainlink raises. The native module creates them; import them from
``chainlink``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, List, Optional, Tuple

if TYPE_CHECKING:
    from . import StageResult


class ChainlinkError(Exception):
    """Base of every error chainlink raises."""


class EngineUnavailable(ChainlinkError):
    """The Docker engine could not be reached (no socket, no permission, no answer)."""


class ImageNotFound(ChainlinkError):
    """An image of the chain could be neither pulled nor found on the engine.

    ``images`` lists every such image."""

    images: List[str]

    def __init__(self, message: str, images: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.images = list(images)

    def __reduce__(self) -> Tuple[Any, Tuple[Any, ...]]:
        return (type(self), (str(self), self.images))


class InvalidStage(ChainlinkError, ValueError):
    """The stages (or the workdir, or the run's environ) are not valid.

    The message lists every problem found, one a line; ``problems`` holds the same lines."""

    problems: List[str]

    def __init__(self, message: str, problems: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)

    def __reduce__(self) -> Tuple[Any, Tuple[Any, ...]]:
        return (type(self), (str(self), self.problems))


class EngineError(ChainlinkError):
    """The engine failed while a chain ran (or while cleaning up after it).

    Everything the run created has been removed by the time this is raised. ``results`` holds
    the results of the stages that finished before the failure; ``stage`` is the index of the
    stage the engine failed on, or ``None`` when the failure was not in a stage."""

    results: List[StageResult]
    stage: Optional[int]

    def __init__(
        self,
        message: str,
        results: Optional[List[StageResult]] = None,
        stage: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.results = list(results) if results is not None else []
        self.stage = stage

    def __reduce__(self) -> Tuple[Any, Tuple[Any, ...]]:
        return (type(self), (str(self), self.results, self.stage))


class CleanupWarning(RuntimeWarning):
    """A run ended and its results are complete, but something it made could not be removed
    (an immutable file in ``/job``, a container the engine would not remove). The message names
    it; a later :func:`chainlink.gc` removes it once it can be removed."""


__all__ = ["ChainlinkError", "CleanupWarning", "EngineUnavailable", "ImageNotFound", "InvalidStage", "EngineError"]
