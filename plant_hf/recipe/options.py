"""How a recipe stage declares its options: one dataclass per stage, marked by `stage_options`."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

Options = TypeVar("Options", bound=type)


def stage_options(
    stage: str, title: str, *, at_least: dict[str, int] | None = None, volatile: tuple[str, ...] = ()
) -> Callable[[Options], Options]:
    """Make a class the dataclass of one stage's options.

    `stage` is the stage whose outputs the options decide (a run folder refuses other values once they are written),
    `title` heads the options' group in `plant-hf fit --help`, `at_least` is the least value of numeric options (None
    stays allowed where it is the default) and `volatile` names the options that do not change what a run computes
    (they may differ when a run is continued).
    """

    def declare(kind: Options) -> Options:
        kind.stage, kind._argument_group_name = stage, title
        kind.at_least, kind.volatile = dict(at_least or {}), volatile
        return dataclass(kind)

    return declare


__all__ = ["stage_options"]
