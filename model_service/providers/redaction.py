"""Masking secrets in text that may reach a caller, the database or a log.

A provider's error can echo the API key or a secret header. The text is
redacted whole before anything cuts it: cutting first can split a secret
and leave its beginning behind, where no whole-secret match finds it. Text
that was already cut elsewhere (a bounded read of an error body) may end in
a secret's beginning; `truncated` masks that too.
"""

from __future__ import annotations

from collections.abc import Iterable

REDACTED = "[redacted]"
ELLIPSIS = "…"


class Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted({secret for secret in secrets if secret}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def cut(self, text: str, limit: int) -> str:
        """`text` redacted, then cut to at most `limit` characters."""
        text = self(text)
        return text if len(text) <= limit else text[: limit - len(ELLIPSIS)] + ELLIPSIS

    def truncated(self, text: str) -> str:
        """`text` that something else cut short, redacted, with a secret's
        beginning at its very end masked as well."""
        text = self(text)
        tail = max(
            (
                n
                for secret in self._secrets
                for n in range(len(secret) - 1, 0, -1)
                if text.endswith(secret[:n])
            ),
            default=0,
        )
        return text[: len(text) - tail] + REDACTED if tail else text
