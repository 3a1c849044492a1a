"""The defense levels, mildest first: each is a column of policy, and the detector moves between them. What
an operator may pin (a level, or `auto`: the detector's), and what a flagged request brings at a level."""

LEVELS = ("normal", "elevated", "under_attack")
MODES = ("auto", *LEVELS)
# request scoring and prompt screening, per level: off, log (logged and counted), flag (also a strike or a
# probing step), refuse (also refused)
ACTIONS = ("off", "log", "flag", "refuse")


def rank(level: str) -> int:
    return LEVELS.index(level)
