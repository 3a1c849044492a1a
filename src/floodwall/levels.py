"""The defense levels, mildest first: each is a column of policy, and the detector moves between them. What
an operator may pin (a level, or `auto`: the detector's), and what a flagged request brings at a level."""

from __future__ import annotations

from typing import Literal, Protocol, get_args

Level = Literal["normal", "elevated", "under_attack"]
LEVELS: tuple[str, ...] = get_args(Level)
MODES = ("auto", *LEVELS)
# request scoring and prompt screening, per level: off, log (logged and counted), flag (also a strike or a
# probing step), refuse (also refused)
Action = Literal["off", "log", "flag", "refuse"]
ACTIONS: tuple[str, ...] = get_args(Action)


class LevelControl(Protocol):
    """Who holds the level in force (edge/control.py's Control): the detector moves it, status reads it."""

    @property
    def level(self) -> str: ...

    async def detected(self, level: str, reason: str) -> None:
        """The detector's move (kept unless an operator pinned the level)."""
        ...


def rank(level: str) -> int:
    return LEVELS.index(level)
