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
    """What a stage made of its input: records passed on, refused, or sent elsewhere.

    ``rejected`` carries a reason code each (``duplicate`` among them); ``routed`` holds
    records that leave the chain at this stage by a named output (a route stage's
    ``errors``, ``logs``...), which the topology sends to that output's sinks.
    """

    passed: list[Out]
    rejected: list[Rejection] = field(default_factory=list)
    routed: dict[str, list[Out]] = field(default_factory=dict)


class Stage(Protocol[In_contra, Out]):
    """A named, pure processing step.

    Guarantees: ``process`` never raises for bad data (it returns a ``Rejection`` with a
    reason code), and every input record is passed on, rejected or routed, once.
    """

    name: str

    def process(self, batch: Sequence[In_contra], origin: Origin = ANY_ORIGIN) -> StageResult[Out]:
        """Process one batch of records that came from ``origin``."""
        ...
