"""The check every burrow v1.0 request passes when auth is on (:class:`Guard`).

Auth is on whenever credentials are configured, by ``--credentials FILE`` or by
``--sqs-credentials``: a server never has one API guarded and the other open. The route
table (:mod:`burrow.api.routes`) then calls :meth:`Guard.check` before any handler runs,
with the route's ``access``:

* no credential, or one that is not valid: 401 ``unauthorized`` with
  ``WWW-Authenticate: Bearer realm="burrow"`` (``public`` routes excepted);
* a valid credential for another account, a read-only one on anything but ``GET``, or an
  account's on an ``admin`` route: 403 ``forbidden``. Admin tokens may do everything.

A path no route matches answers 401 before its 404 (so without a credential nothing about
the server's paths is learned). Error messages never name the account, queue or message of
the path. Tokens come in ``Authorization: Bearer <token>`` or ``X-Auth-Token: <token>`` and
are looked up by their SHA-256 digest, so the dict lookup's timing depends on the digest,
never on how much of a stored token a guess got right. SigV4 is checked by
:class:`burrow.api.sqs_auth.Authenticator`, from the same :class:`Credentials`.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from burrow.auth.credentials import Credentials, CredentialsError, digest, load_credentials
from burrow.auth.grant import Grant
from burrow.config import Settings
from burrow.core import validation
from burrow.core.errors import BadRequest, Forbidden, Unauthorized
from burrow.http.types import Request
from burrow.quotas import Quota

if TYPE_CHECKING:
    from burrow.api.routes import Route

log = logging.getLogger("burrow.auth")

#: What a 401 carries (RFC 6750).
CHALLENGE = ("www-authenticate", 'Bearer realm="burrow"')
NO_CREDENTIAL = "a credential is required: send Authorization: Bearer <token> or X-Auth-Token: <token>"
BAD_CREDENTIAL = "the credential is not valid"
NOT_YOURS = "this credential does not give access to this resource"
READ_ONLY = "this credential is read-only: only GET is allowed"
ADMIN_ONLY = "this needs an admin token"
#: Methods a read-only token may use.
READS = frozenset({"GET", "HEAD"})


def auth_on(settings: Settings) -> bool:
    """Whether ``settings`` configure any credentials (then both APIs check them)."""
    return bool(settings.credentials or settings.sqs_credentials.strip())


def token_of(headers: Mapping[str, str]) -> str | None:
    """The v1.0 token a request carries: ``Authorization: Bearer <token>``, else ``X-Auth-Token``."""
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    header = headers.get("x-auth-token")
    return header.strip() if header is not None and header.strip() else None


class Guard:
    """The credentials in force, their reload, and the v1.0 check.

    ``on_load`` is called with the quotas of every credentials loaded (the first and each
    successful reload): the engine's ``set_quotas``.
    """

    def __init__(
        self, settings: Settings, on_load: Callable[[Mapping[str, Quota]], None] | None = None
    ) -> None:
        self.path = settings.credentials
        self.sqs_credentials = settings.sqs_credentials
        self._on_load = on_load
        #: Replaced whole by :meth:`reload`; readers take one reference per request.
        self.credentials: Credentials = load_credentials(self.path, self.sqs_credentials)
        #: Route -> index in the split path of its ``{account}`` parameter.
        self._account_at: dict[Route, int] = {}
        if on_load is not None:
            on_load(self.credentials.quotas)

    @classmethod
    def from_settings(
        cls, settings: Settings, on_load: Callable[[Mapping[str, Quota]], None] | None = None
    ) -> Guard | None:
        """A Guard when auth is on (:func:`auth_on`), else None. CredentialsError for a bad file."""
        return cls(settings, on_load) if auth_on(settings) else None

    def reload(self) -> bool:
        """Read the file again. A file that cannot be used keeps the credentials in force and
        logs why (never a secret); True if the new ones are in force."""
        if not self.path:
            log.info("SIGHUP: no credentials file to reload (only --sqs-credentials)")
            return False
        try:
            fresh = load_credentials(self.path, self.sqs_credentials)
        except CredentialsError as error:
            log.error("credentials not reloaded, the previous ones stay in force: %s", error)
            return False
        self.credentials = fresh
        if self._on_load is not None:
            self._on_load(fresh.quotas)
        log.info(
            "credentials reloaded from %s: %d accounts, %d tokens, %d SQS keys",
            self.path,
            len(fresh.accounts),
            len(fresh.grants),
            len(fresh.sqs_keys),
        )
        return True

    def grant(self, request: Request) -> Grant:
        """What the request's token grants; Unauthorized if it has none that is valid."""
        token = token_of(request.headers)
        if token is None:
            raise Unauthorized(NO_CREDENTIAL)
        grant = self.credentials.grants.get(digest(token))
        if grant is None:
            raise Unauthorized(BAD_CREDENTIAL)
        return grant

    def check(self, request: Request, route: Route, parts: list[str]) -> Grant | None:
        """The grant of a request on ``route`` (None on a public route); Unauthorized or Forbidden
        as the module docstring says."""
        access = route.access
        if access == "public":
            return None
        grant = self.grant(request)
        if grant.account is None:  # admin
            return grant
        if access == "admin":
            raise Forbidden(ADMIN_ONLY)
        if access == "account":
            at = self._account_at.get(route)
            if at is None:
                start = 2 if route.first is not None else 1  # where the parameters start in parts
                at = self._account_at[route] = start + route.params.index("account")
            raw = parts[at]
            if raw != grant.account:
                try:
                    same = validation.name(raw, "account") == grant.account
                except BadRequest:
                    same = False
                if not same:
                    raise Forbidden(NOT_YOURS)
        if not grant.write and request.method not in READS:
            raise Forbidden(READ_ONLY)
        return grant


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` reaches this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def warn_if_open(settings: Settings, host: str) -> None:
    """The loud warning of a server without auth that listens beyond loopback."""
    if not auth_on(settings) and not is_loopback(host):
        log.warning(
            "AUTH IS OFF and this server listens on %s, beyond loopback: anyone who can reach it"
            " can read, take and delete every account's messages. Give --credentials FILE"
            " (see burrow credentials --help) or listen on 127.0.0.1.",
            host,
        )
