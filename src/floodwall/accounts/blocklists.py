"""Sign-up blocklists: disposable e-mail domains and the most common passwords (product data in
accounts/data/, with its sources and licences in that folder's README)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).with_name("data")


def _lines(path: Path) -> frozenset[str]:
    text = path.read_text(encoding="utf-8")
    return frozenset(line.strip().lower() for line in text.split("\n") if line.strip() and not line.startswith("#"))


class Blocklists:
    def __init__(self, disposable: frozenset[str] = frozenset(), allowed: frozenset[str] = frozenset(),
                 passwords: frozenset[str] = frozenset()) -> None:
        self.disposable_domains = disposable - allowed
        self.passwords = passwords

    @classmethod
    def load(cls, *, disposable: bool = True, passwords: bool = True, disposable_file: str = "",
             passwords_file: str = "") -> Blocklists:
        """The shipped lists, or the operator's own files; either check may be off."""
        domains = _lines(Path(disposable_file or DATA / "disposable_domains.txt")) if disposable else frozenset()
        allowed = _lines(DATA / "disposable_allowlist.txt") if disposable and not disposable_file else frozenset()
        common = _lines(Path(passwords_file or DATA / "common_passwords_10k.txt")) if passwords else frozenset()
        return cls(domains, allowed, common)

    def is_disposable(self, email: str) -> bool:
        """The domain, or any domain it is under (a.b.mailinator.com), is a disposable mail service."""
        labels = email.rpartition("@")[2].lower().rstrip(".").split(".")
        return any(".".join(labels[i:]) in self.disposable_domains for i in range(len(labels) - 1))

    def is_common(self, password: str) -> bool:
        # case changes of a common password are among the first guesses too
        return password.lower() in self.passwords
