"""age encryption of external-weights exports (``age_encryption_recipients``).

The service encrypts each exported file to the given recipients (age X25519 keys
``age1...``, or SSH keys) and adds an ``.age`` suffix; ``tinker_cookbook.weights.download``
asks for this. The embedded server does it with ``pyrage`` when that package is installed
(the cookbook depends on it); without it, such an export is refused with a clear message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["MAX_RECIPIENTS", "AgeUnavailable", "encrypt_files", "parse_recipients"]

#: the service's limit (SDK reference, save_weights_external)
MAX_RECIPIENTS = 10


class AgeUnavailable(ValueError):
    """Encryption was asked for and cannot be done here (no pyrage, or a bad recipient)."""


def parse_recipients(texts: Sequence[str]) -> list[Any]:
    """pyrage recipients for ``texts``; ``AgeUnavailable`` says what is wrong."""
    if len(texts) > MAX_RECIPIENTS:
        raise AgeUnavailable(f"at most {MAX_RECIPIENTS} age_encryption_recipients, got {len(texts)}")
    try:
        import pyrage
    except ImportError:
        raise AgeUnavailable(
            "age encryption of exports needs the pyrage package in the local server's "
            "environment (pip install pyrage)") from None
    recipients: list[Any] = []
    for text in texts:
        try:
            if text.startswith("age1"):
                recipients.append(pyrage.x25519.Recipient.from_str(text))
            else:
                recipients.append(pyrage.ssh.Recipient.from_str(text))
        except Exception as exc:  # pyrage's own error types
            raise AgeUnavailable(f"not an age or SSH recipient: {text[:40]!r} ({exc})") from None
    return recipients


def encrypt_files(files: Mapping[str, bytes], recipients: Sequence[Any]) -> dict[str, bytes]:
    """Each file encrypted to ``recipients``, named with an ``.age`` suffix."""
    import pyrage

    return {f"{name}.age": pyrage.encrypt(data, list(recipients)) for name, data in files.items()}
