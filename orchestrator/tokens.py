"""Result tokens: what makes a worker's report count (pure).

Every dispatched attempt carries a token, and a result or progress report counts only
if it echoes the token of the attempt it names. Permissions let a worker publish
results for any workflow (it cannot know the ids in advance), so the token is what
keeps a client that may publish results, or a worker of another task type, from
finishing a step it was never given: only the orchestrator and whoever received the
task message know it.

A token is an HMAC of the attempt's id under the deployment's result key, not a random
draw: the engine stays a pure function (the same history gives the same state and the
same tokens, on every replica and after every crash), and a report can be checked
before its dispatch is even stored (an early result). The key is made once per
deployment and kept in the secrets bucket, which only the orchestrator may read
(:meth:`contracts.subjects.Subjects.secrets_bucket`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Final

__all__ = ["KEY_BYTES", "RESULT_KEY", "attempt_token", "new_key", "same_token"]

#: Bytes of a result key.
KEY_BYTES: Final = 32
#: The key of the result key in the secrets bucket.
RESULT_KEY: Final = "result-key"
#: Bytes of a token (128 bits, as ``secrets.token_urlsafe(16)``).
_TOKEN_BYTES: Final = 16


def new_key() -> bytes:
    """A fresh random result key."""
    return secrets.token_bytes(KEY_BYTES)


def attempt_token(key: bytes, workflow_id: str, step_id: str, attempt: int) -> str:
    """The token of one attempt of one step (``step_id`` may be a map item's)."""
    mac = hmac.new(key, f"{workflow_id}:{step_id}:{attempt}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()[:_TOKEN_BYTES]).rstrip(b"=").decode()


def same_token(given: str | None, expected: str) -> bool:
    """Whether a report's token is the expected one (in constant time)."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
