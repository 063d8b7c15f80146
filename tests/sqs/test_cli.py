"""AWS CLI smoke run: the unmodified CLI from PyPI, as a subprocess, against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.sqs.conftest import ThreadedServer

AWS = str(Path(sys.executable).with_name("aws"))


def _aws(server: ThreadedServer, *args: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "cli",
        "AWS_SECRET_ACCESS_KEY": "cli-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_PAGER": "",
    }
    done = subprocess.run(
        [AWS, "--endpoint-url", server.url, "--output", "json", "sqs", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else {}


def test_aws_cli_smoke(server: ThreadedServer, name: str) -> None:
    url = str(_aws(server, "create-queue", "--queue-name", name)["QueueUrl"])
    assert url == f"{server.url}/cli/{name}"
    sent = _aws(server, "send-message", "--queue-url", url, "--message-body", "hello")
    assert sent["MD5OfMessageBody"] == "5d41402abc4b2a76b9719d911017c592"
    got = _aws(server, "receive-message", "--queue-url", url, "--wait-time-seconds", "1")
    [message] = got["Messages"]
    assert message["Body"] == "hello" and message["MessageId"] == sent["MessageId"]
    _aws(server, "delete-message", "--queue-url", url, "--receipt-handle", message["ReceiptHandle"])
    assert _aws(server, "receive-message", "--queue-url", url) == {}
