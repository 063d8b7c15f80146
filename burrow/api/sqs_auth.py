"""Who sends an SQS request: the SigV4 ``Authorization`` header, verified or not.

* With auth off (no ``--credentials`` file, no ``--sqs-credentials``: the default, for
  local use) any signature is accepted unchecked, like ElasticMQ and moto, whatever
  region and service its scope names; the access key *is* the Burrow account, a request
  with no ``Authorization`` header uses ``Settings.sqs_default_account``, and a QueueUrl
  may name any account.
* With auth on (:func:`burrow.auth.auth_on`: either setting, even when only burrow v1.0
  tokens are configured) every request must be signed with a configured key (the
  ``sqs_keys`` of the credentials file, or ``--sqs-credentials``; InvalidClientTokenId
  otherwise), for this region and the ``sqs`` service; the signature must match
  (SignatureDoesNotMatch for all three, 403) and ``X-Amz-Date`` must be within 15 minutes
  of the server clock. The key acts as its account (a ``--sqs-credentials`` key as the
  account of its own name), and a caller reaches only that account (AccessDenied otherwise).
  Signatures are compared with :func:`hmac.compare_digest`, in constant time; keys are read
  from the :class:`~burrow.auth.Guard`'s credentials at each request, so a reload (SIGHUP)
  takes effect at once.
* The server is one region, ``Settings.region``: every Caller carries it, so ARNs
  always name it, whatever region a request was signed for.

The canonical request follows the SigV4 rules as botocore applies them: the
already-encoded path is encoded once more, query pairs are sorted.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from urllib.parse import quote, unquote

from burrow.auth.guard import Guard
from burrow.config import Settings
from burrow.http.types import Request
from burrow.sqs.errors import SqsError
from burrow.sqs.params import Caller

_ALGORITHM = "AWS4-HMAC-SHA256"
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+)\s*,\s*SignedHeaders=(?P<headers>[^,\s]+)\s*,"
    r"\s*Signature=(?P<sig>[0-9a-fA-F]+)\s*"
)
_ACCESS_KEY = re.compile(r"[A-Za-z0-9_.-]{1,128}")
#: Largest clock difference accepted for X-Amz-Date (seconds), as AWS.
MAX_SKEW = 900


def signed_account(headers: Mapping[str, str]) -> str | None:
    """The account an SQS request acts as by its ``Authorization`` credential (the access key),
    or None when it names none (then the default account applies, or the server refuses it).

    The signature is not checked: the router (``burrow proxy``) places a request with this and
    forwards it unchanged to the server that verifies it.
    """
    auth = headers.get("authorization")
    if auth is None:
        return None
    match = _AUTH.fullmatch(auth.strip())
    if match is None:
        return None
    access = match["cred"].split("/", 1)[0]
    return access if _ACCESS_KEY.fullmatch(access) else None


class Authenticator:
    """The SigV4 check of one server. ``guard``: the server's (shared with the burrow v1.0
    check); None builds one from ``settings`` (None again when auth is off)."""

    def __init__(self, settings: Settings, guard: Guard | None = None) -> None:
        self.guard = guard if guard is not None else Guard.from_settings(settings)
        self.strict = self.guard is not None
        self.default_account = settings.sqs_default_account
        self.region = settings.region
        self.fallback_host = f"{settings.host}:{settings.port}"
        #: Dev mode only: (credential scope, Host) -> Caller.
        self._dev_cache: dict[tuple[str, str], Caller] = {}

    def caller(self, request: Request, now: float) -> Caller:
        headers = request.headers
        host = headers.get("host") or self.fallback_host
        auth = headers.get("authorization")
        if auth is None:
            if self.strict:
                raise SqsError("MissingAuthenticationToken", "Request is missing Authentication Token")
            return Caller(self.default_account, self.region, host)
        if not self.strict:
            # Signatures differ on every request but the credential scope does not: cache on it.
            start = auth.find("Credential=")
            key = (auth[start : auth.find(",", start)] if start >= 0 else "", host)
            cached = self._dev_cache.get(key)
            if cached is None:
                cached = self._parse(auth, host, request, now)
                if len(self._dev_cache) >= 1024:
                    self._dev_cache.clear()
                self._dev_cache[key] = cached
            return cached
        return self._parse(auth, host, request, now)

    def _parse(self, auth: str, host: str, request: Request, now: float) -> Caller:
        match = _AUTH.fullmatch(auth.strip())
        if match is None:
            if self.strict:
                raise SqsError(
                    "IncompleteSignature", "The request signature does not conform to AWS standards."
                )
            return Caller(self.default_account, self.region, host)
        scope = match["cred"].split("/")
        access = scope[0]
        if not _ACCESS_KEY.fullmatch(access):
            raise SqsError(
                "InvalidClientTokenId",
                "The access key names the Burrow account: 1 to 128 of A-Z a-z 0-9 _ . -",
            )
        if self.strict and (len(scope) != 5 or scope[4] != "aws4_request"):
            raise SqsError(
                "IncompleteSignature", "Credential must be <key>/<date>/<region>/sqs/aws4_request."
            )
        if self.strict:
            return Caller(self._verify(request, match, scope, now), self.region, host, True)
        return Caller(access, self.region, host, False)

    def _verify(self, request: Request, match: re.Match[str], scope: list[str], now: float) -> str:
        """The account of a verified request (SqsError if it is not)."""
        assert self.guard is not None
        found = self.guard.credentials.sqs_keys.get(scope[0])
        if found is None:
            raise SqsError("InvalidClientTokenId", "The security token included in the request is invalid.")
        secret, account = found
        if scope[2] != self.region:
            raise SqsError(
                "SignatureDoesNotMatch",
                f"Credential should be scoped to a valid region, not '{scope[2][:64]}'"
                f" (this server is {self.region}).",
            )
        if scope[3] != "sqs":
            raise SqsError("SignatureDoesNotMatch", "Credential should be scoped to correct service: 'sqs'.")
        headers = request.headers
        amz_date = headers.get("x-amz-date", "")
        try:
            signed_at = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
        except ValueError:
            raise SqsError("IncompleteSignature", "X-Amz-Date header is missing or malformed.") from None
        if abs(now - signed_at) > MAX_SKEW:
            raise SqsError(
                "SignatureDoesNotMatch",
                f"Signature expired: {amz_date} is now earlier or later than"
                " 15 minutes from the server time.",
            )
        if scope[1] != amz_date[:8]:
            raise SqsError("SignatureDoesNotMatch", "Credential scope date does not match X-Amz-Date.")
        signed = match["headers"].lower().split(";")
        if "host" not in signed:
            raise SqsError("SignatureDoesNotMatch", "The host header must be signed.")
        lines = []
        for name in signed:
            value = headers.get(name)
            if value is None:
                raise SqsError("SignatureDoesNotMatch", f"Signed header {name} is missing.")
            lines.append(f"{name}:{' '.join(value.split())}\n")
        payload = hashlib.sha256(request.body).hexdigest()
        canonical = "\n".join(
            (
                request.method,
                quote(request.path or "/", safe="/~"),
                _canonical_query(request.query),
                "".join(lines),
                match["headers"].lower(),
                payload,
            )
        )
        credential_scope = "/".join(scope[1:])
        to_sign = "\n".join(
            (_ALGORITHM, amz_date, credential_scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest())
        )
        key = ("AWS4" + secret).encode("utf-8")
        for part in scope[1:]:
            key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
        expected = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, match["sig"].lower()):
            raise SqsError(
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the"
                " signature you provided. Check your AWS Secret Access Key and signing method.",
            )
        return account


def _canonical_query(query: str) -> str:
    if not query:
        return ""
    pairs = []
    for part in query.split("&"):
        key, _, value = part.partition("=")
        pairs.append((quote(unquote(key), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))
