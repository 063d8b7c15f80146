"""The MD5 digests SQS returns, computed exactly as AWS does (sqs.md section 5.5).

Most SDKs (Java, JS, Go, .NET, Ruby, PHP; not boto3) recompute these and reject a
response whose digest differs, so they are part of the wire contract.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping

from burrow.sqs.model import Attribute

_STRING_TRANSPORT = b"\x01"
_BINARY_TRANSPORT = b"\x02"


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_of_body(body: str | bytes) -> str:
    """MD5OfMessageBody / MD5OfBody: hex MD5 of the body's UTF-8 bytes."""
    return md5_hex(body.encode("utf-8") if isinstance(body, str) else body)


def _chunk(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def md5_of_attributes(attributes: Mapping[str, Attribute]) -> str | None:
    """MD5OfMessageAttributes (and MD5OfMessageSystemAttributes); None when there are none.

    For each attribute in name order: length-prefixed name, length-prefixed data
    type, one transport byte (1 string/number, 2 binary), length-prefixed value.
    """
    if not attributes:
        return None
    parts: list[bytes] = []
    for name in sorted(attributes):
        attr = attributes[name]
        parts.append(_chunk(name.encode("utf-8")))
        parts.append(_chunk(attr.data_type.encode("utf-8")))
        if attr.binary is not None:
            parts.append(_BINARY_TRANSPORT + _chunk(attr.binary))
        else:
            parts.append(_STRING_TRANSPORT + _chunk((attr.string or "").encode("utf-8")))
    return md5_hex(b"".join(parts))
