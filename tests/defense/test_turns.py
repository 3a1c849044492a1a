"""The order prompts go to the scorer process in: a call's first, then by characters between accounts."""

from __future__ import annotations

from floodwall.defense.turns import Turns


def taken(turns: Turns[str]) -> list[str]:
    out = []
    while (item := turns.take()) is not None:
        out.append(item)
    return out


def test_the_prompts_calls_wait_for_go_first_in_the_order_they_came() -> None:
    turns: Turns[str] = Turns()
    turns.put("aside", 10, account=1)
    turns.put("path 1", 5000, urgent=True)
    turns.put("path 2", 10, urgent=True)
    assert turns.urgent_characters == 5010 and turns.characters == 5020 and len(turns) == 3
    assert taken(turns) == ["path 1", "path 2", "aside"]
    assert turns.characters == turns.urgent_characters == 0 and len(turns) == 0


def test_accounts_share_the_turns_by_characters_not_by_prompts() -> None:
    turns: Turns[str] = Turns()
    for n in range(3):
        turns.put(f"long {n}", 16000, account="attacker")
    for n in range(20):
        turns.put(f"short {n}", 100, account="client")
    order = taken(turns)
    # each round an account sends up to QUANTUM characters' work: the client's twenty short prompts (20 x 300
    # with their overhead) go in two rounds while the attacker saves up for its first long one (four rounds)
    assert order[:20] == [f"short {n}" for n in range(20)]
    assert order[20:] == ["long 0", "long 1", "long 2"]


def test_a_long_prompt_alone_still_goes_and_turns_are_not_saved_while_idle() -> None:
    turns: Turns[str] = Turns()
    turns.put("huge", 16500, account=7)
    assert turns.take() == "huge" and turns.take() is None
    turns.put("next", 16500, account=7)  # no credit left over from before: saved again from nothing
    assert taken(turns) == ["next"]


def test_clear_gives_back_everything_waiting() -> None:
    turns: Turns[str] = Turns()
    turns.put("a", 1, account=1)
    turns.put("b", 1, urgent=True)
    turns.put("c", 1)
    assert sorted(turns.clear()) == ["a", "b", "c"]
    assert turns.take() is None and turns.characters == 0 and len(turns) == 0


def test_a_prompt_of_no_characters_still_costs_its_account_a_turn() -> None:
    turns: Turns[str] = Turns()
    for n in range(250):
        turns.put(f"tiny {n}", 0, account="many")
    turns.put("other", 10, account="one")
    order = taken(turns)
    # one round's quantum covers QUANTUM // OVERHEAD of the tiny ones, then the other account's turn comes
    assert order.index("other") == Turns.QUANTUM // Turns.OVERHEAD


def test_a_stream_of_urgent_prompts_lets_the_others_through_now_and_then() -> None:
    turns: Turns[str] = Turns()
    turns.put("aside", 10, account=1)
    for n in range(20):
        turns.put(f"urgent {n}", 16000, urgent=True)
    order = [turns.take() for _ in range(Turns.URGENT_RUN + 1)]
    assert order == [*(f"urgent {n}" for n in range(Turns.URGENT_RUN)), "aside"]
    assert turns.take() == f"urgent {Turns.URGENT_RUN}"  # (none aside left: the urgent ones go on)
