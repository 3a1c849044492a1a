"""The detector against sequences of seconds, with the default policy's rules: a flood is shed fast, a
flash crowd is queued, the level comes down after the attack and never flaps."""

from __future__ import annotations

import pytest

from floodwall.config import ConfigError
from floodwall.defense.detector import Detector, DetectorPolicy
from floodwall.policy import PolicyFile

CALM = {"requests": 6.0, "error_share": 0.02, "new_networks": 0.1, "new_addresses": 0.2, "signups": 0.05,
        "login_failures": 0.05, "logins": 0.3}
FLOOD = {**CALM, "requests": 1000.0, "error_share": 0.65, "new_networks": 20.0, "new_addresses": 500.0}
FLASH_CROWD = {**CALM, "requests": 60.0, "error_share": 0.05, "new_networks": 8.0, "new_addresses": 8.0,
               "signups": 4.0}
STUFFING = {**CALM, "requests": 55.0, "error_share": 0.9, "login_failures": 50.0, "logins": 50.0}


class Run:
    """The detector as the watch drives it: each second its move, if any, becomes the level."""

    def __init__(self, policy: DetectorPolicy | None = None) -> None:
        self.detector = Detector(policy or PolicyFile.load().detector)
        self.level = "normal"
        self.second = 0
        self.moves: list[tuple[int, str, str]] = []

    def feed(self, figures: dict[str, float], seconds: int) -> None:
        for _ in range(seconds):
            move = self.detector.observe(figures, self.level)
            if move is not None:
                self.level = move.level
                self.moves.append((self.second, move.level, move.reason))
            self.second += 1

    def levels(self) -> list[str]:
        return [level for _, level, _ in self.moves]

    def first(self, level: str, after: int) -> int:
        return next(second for second, moved, _ in self.moves if moved == level and second >= after) - after


def test_a_flood_is_shed_within_seconds_and_the_level_comes_back_within_a_minute() -> None:
    run = Run()
    run.feed(CALM, 120)
    run.feed(FLOOD, 60)
    assert run.first("under_attack", after=120) <= 2  # the second it held twice, counted from 0
    reason = run.moves[0][2]
    assert reason.startswith("flood: requests 1000 > 10x baseline (60)") and "error_share 0.65 > 0.3" in reason
    run.feed(CALM, 90)
    assert run.levels() == ["under_attack", "elevated", "normal"]
    assert run.first("normal", after=180) < 60
    assert "quiet for 20s" in run.moves[-1][2]


def test_a_flash_crowd_is_queued_not_shed() -> None:
    run = Run()
    run.feed(CALM, 120)
    run.feed(FLASH_CROWD, 120)
    assert run.levels() == ["elevated"]
    assert run.moves[0][2].startswith("newcomers: new_networks 8.00 > 10x baseline")
    run.feed(CALM, 60)
    assert run.levels() == ["elevated", "normal"]


def test_stuffing_raises_the_level_to_watch_sign_ins() -> None:
    run = Run()
    run.feed(CALM, 60)
    run.feed(STUFFING, 30)
    assert run.levels() == ["elevated"] and run.moves[0][2].startswith("stuffing: login_failures 50")


def test_a_flood_hovering_at_the_threshold_does_not_flap() -> None:
    run = Run()
    run.feed(CALM, 120)
    run.feed(FLOOD, 10)
    for _ in range(60):  # above the threshold one second, below it (but above half of it) the next
        run.feed({**FLOOD, "requests": 260.0}, 1)
        run.feed({**FLOOD, "requests": 150.0}, 1)
    assert run.levels() == ["under_attack"]
    run.feed(CALM, 60)
    assert run.levels() == ["under_attack", "elevated", "normal"]


def test_one_noisy_second_moves_nothing() -> None:
    run = Run()
    run.feed(CALM, 120)
    for _ in range(10):
        run.feed(FLOOD, 1)
        run.feed(CALM, 5)
    assert run.moves == []


def test_baselines_learn_the_service_and_ignore_attacks() -> None:
    busy = {**CALM, "requests": 400.0, "error_share": 0.4}  # a busy API with many 4xx is this service's normal
    run = Run()
    run.feed(busy, 300)
    assert run.moves == []
    assert run.detector.baselines["requests"] == pytest.approx(400.0)
    run.feed({**busy, "requests": 5000.0}, 30)
    assert run.levels() == ["under_attack"]
    assert run.detector.baselines["requests"] == pytest.approx(400.0)  # the flood taught it nothing


def test_nothing_moves_while_the_detector_warms_up() -> None:
    run = Run()
    run.feed(FLOOD, 29)
    assert run.moves == []


def test_an_operators_level_is_left_alone_while_nothing_holds_it_up() -> None:
    detector = Detector(PolicyFile.load().detector)
    for _ in range(60):
        assert detector.observe(CALM, "normal") is None
    moves = [detector.observe(CALM, "under_attack") for _ in range(20)]
    assert [m.level for m in moves if m] == ["elevated"]


@pytest.mark.parametrize("when", [["requests >> 3"], ["bogus > 3"], ["requests > 3x median"], "requests > 3", []])
def test_bad_rules_are_refused_with_where(when: object) -> None:
    with pytest.raises(ConfigError, match=r"\[detector\] rule 1"):
        DetectorPolicy.from_data({"rule": [{"name": "r", "level": "elevated", "when": when}]}, "[detector]")


@pytest.mark.parametrize("data", [{"hold": "soon"}, {"release": 2}, {"cooldown": -1}, {"rule": [{"name": "r"}]},
                                  {"rule": [{"name": "r", "level": "normal", "when": ["requests > 1"]}]},
                                  {"bogus": 1}])
def test_bad_detector_settings_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"\[detector\]"):
        DetectorPolicy.from_data(data, "[detector]")


