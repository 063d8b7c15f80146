"""Tenants, credentials and authentication for both APIs (docs/operations.md "Auth and tenants").

* :mod:`.credentials`: the ``--credentials`` TOML file, loaded and checked;
* :mod:`.guard`: the burrow v1.0 check (:class:`Guard`) and its reload on SIGHUP;
* :mod:`.grant`: :class:`Grant`, what a checked credential allows (``request.grant``);
* :mod:`.manage`: the ``burrow credentials`` command that edits the file.

SigV4 (the SQS API) is verified by :class:`burrow.api.sqs_auth.Authenticator` from the same
credentials.
"""

from __future__ import annotations

from burrow.auth.credentials import Credentials, CredentialsError, SqsKey, load_credentials
from burrow.auth.grant import ADMIN, Grant
from burrow.auth.guard import Guard, auth_on

__all__ = [
    "ADMIN",
    "Credentials",
    "CredentialsError",
    "Grant",
    "Guard",
    "SqsKey",
    "auth_on",
    "load_credentials",
]
