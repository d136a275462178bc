"""The Stage protocol: a named step that returns rejections instead of raising."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from hopper.events.model import Rejection

In_contra = TypeVar("In_contra", contravariant=True)
Out = TypeVar("Out")


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a payload came from, and which schools its sender may write for."""

    source: str = ""
    client: str = ""
    schools: frozenset[str] | None = None  # None: any school


ANY_ORIGIN = Origin()


@dataclass(slots=True)
class StageResult(Generic[Out]):
    """What a stage made of its input: records passed on, and records refused."""

    passed: list[Out]
    rejected: list[Rejection] = field(default_factory=list)


class Stage(Protocol[In_contra, Out]):
    """A named, pure processing step.

    Guarantees: ``process`` never raises for bad data (it returns a ``Rejection`` with a
    reason code), and every input record is either passed on or rejected.
    """

    name: str

    def process(self, batch: Sequence[In_contra], origin: Origin = ANY_ORIGIN) -> StageResult[Out]:
        """Process one batch of records that came from ``origin``."""
        ...
