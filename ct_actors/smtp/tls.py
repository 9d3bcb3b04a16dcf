"""The client TLS context for opportunistic STARTTLS (RFC 3207, RFC 7435)."""

from __future__ import annotations

import contextlib
import functools
import ssl


@functools.cache
def opportunistic_tls_context() -> ssl.SSLContext:
    """A client context that encrypts but does not authenticate (opportunistic TLS). Built once:
    no CA store is loaded since nothing is verified."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # Opportunistic encryption accepts what old servers speak (TLS 1.0/1.1, legacy ciphers):
    # any encryption beats the plaintext we would fall back to. RFC 7435 ("Opportunistic
    # Security"); Postfix's smtp_tls_security_level=may behaves the same way.
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with contextlib.suppress(ssl.SSLError):
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx
