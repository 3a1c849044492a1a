"""The shipped sign-up blocklists and an operator's own."""

from __future__ import annotations

from pathlib import Path

from floodwall.accounts.blocklists import Blocklists


def test_the_shipped_lists() -> None:
    lists = Blocklists.load()
    assert len(lists.disposable_domains) > 8000 and len(lists.passwords) >= 9000
    assert lists.is_disposable("someone@mailinator.com")
    assert lists.is_disposable("someone@sub.Mailinator.COM.")
    assert not lists.is_disposable("someone@example.com")
    assert not lists.is_disposable("someone@gmail.com")
    assert lists.is_common("password") and lists.is_common("PASSWORD") and lists.is_common("12345678")
    assert not lists.is_common("correct horse battery staple")


def test_the_allowlist_wins() -> None:
    allowed = next(iter(Blocklists.load().disposable_domains))
    lists = Blocklists(frozenset({allowed, "bad.example"}), frozenset({allowed}), frozenset())
    assert not lists.is_disposable(f"a@{allowed}")
    assert lists.is_disposable("a@bad.example")


def test_an_operators_own_files_and_checks_off(tmp_path: Path) -> None:
    (tmp_path / "domains.txt").write_text("# ours\nthrowaway.example\n")
    (tmp_path / "passwords.txt").write_text("hunter2hunter2\n")
    lists = Blocklists.load(disposable_file=str(tmp_path / "domains.txt"),
                            passwords_file=str(tmp_path / "passwords.txt"))
    assert lists.is_disposable("a@throwaway.example") and not lists.is_disposable("a@mailinator.com")
    assert lists.is_common("Hunter2Hunter2") and not lists.is_common("password")
    off = Blocklists.load(disposable=False, passwords=False)
    assert not off.is_disposable("a@mailinator.com") and not off.is_common("password")
