"""Building the EmailVerifier for the daemon: the API key from the environment variable the
registry names (`software.api_key_source`, MILLIONVERIFIER_API_KEY), the HTTP client, the gate.

The key is never read from the config file and never logged: hand it to
`ct_actors.log.set_secrets` / `configure_logging(secrets=...)` along with the config's secrets so
that it is masked wherever it might appear.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import httpx

from ct_actors.throttle.calendar import UtcClock
from ct_actors.throttle.killswitch import KillSwitches
from ct_actors.throttle.limiter import ToolLimiter
from ct_actors.toolbox import ToolSpec
from ct_actors.verify.client import DEFAULT_BASE_URL, MillionVerifierClient
from ct_actors.verify.gate import EmailVerifier, GateSettings
from ct_actors.verify.ledger import VerifierLedger

DEFAULT_KEY_VARIABLE = "MILLIONVERIFIER_API_KEY"


def api_key_variable(spec: ToolSpec) -> str:
    return spec.api_key_source or DEFAULT_KEY_VARIABLE


def api_key_from_environment(
    spec: ToolSpec, environ: Mapping[str, str] | None = None
) -> str | None:
    """The key from the registry's `api_key_source` variable; None if unset or blank (then
    the verifier stays off, whatever the config says)."""
    env = os.environ if environ is None else environ
    value = env.get(api_key_variable(spec), "").strip()
    return value or None


def make_email_verifier(
    spec: ToolSpec,
    *,
    api_key: str,
    ledger: VerifierLedger,
    switches: KillSwitches,
    clock: UtcClock,
    owner: str,
    limiter: ToolLimiter | None,
    base_url: str = DEFAULT_BASE_URL,
    timeout: float = 20.0,
    vendor_timeout: int = 10,
    transport: httpx.AsyncBaseTransport | None = None,
    settings: GateSettings | None = None,
) -> EmailVerifier:
    """Client + gate. Must be called inside trio only if `clock` is created here (it is not:
    pass the limiters' UtcClock so budgets and the money month agree). `transport` is the
    client's network (default: the real one, TLS verified); close with `EmailVerifier.aclose`."""
    client = MillionVerifierClient(
        base_url, api_key, timeout=timeout, vendor_timeout=vendor_timeout, transport=transport
    )
    return EmailVerifier(
        spec,
        client=client,
        ledger=ledger,
        switches=switches,
        clock=clock,
        owner=owner,
        limiter=limiter,
        settings=settings,
    )
