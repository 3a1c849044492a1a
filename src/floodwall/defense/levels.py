"""The defense levels, mildest first: each is a column of policy, and the detector moves between them."""

LEVELS = ("normal", "elevated", "under_attack")


def rank(level: str) -> int:
    return LEVELS.index(level)
