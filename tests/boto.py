"""A real boto3 SQS client for tests: one place for how the suites build it."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config


def sqs_client(
    url: str,
    access_key: str = "testing",
    secret: str = "testing",
    region: str = "us-east-1",
    read_timeout: float = 30,
) -> Any:
    """boto3 SQS against ``url``, signing as ``access_key`` (without credentials configured on the
    server, the access key is the account), with no retries, so a refusal is seen as it is."""
    return boto3.client(
        "sqs",
        endpoint_url=url,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1}, read_timeout=read_timeout),
    )
