"""What a checked credential allows: one small value the route table attaches to the request."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Grant:
    """``account``: the one account the credential acts on, or None for an admin token (every
    account, and the server-wide routes). ``write``: False for a read-only token (``GET`` only)."""

    account: str | None
    write: bool

    @property
    def admin(self) -> bool:
        return self.account is None


#: What an admin token grants.
ADMIN = Grant(None, True)
