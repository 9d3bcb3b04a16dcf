"""Test doubles for ct-actors, in one place (as `trio.testing` is for trio). Production code does
not import this package; the demo's DNS benchmark does (its responder is `FakeDnsServer`).

Which double for what:

* The network (`Connector`), three in-memory ones that differ in what answers
  (`connectors`):
  - `ScriptedConnector` + `ScriptedServer` scripts (`opening`, `Expect`, `reply`, `closing`...):
    one exact dialogue per connection; for the SMTP client and session.
  - `MailHostNet` + `MailHost`: hosts written out in the test, answering by rules and
    recording every command with its virtual time; for the pools, the probe, slow hosts.
  - `SimConnector` (`open_sim_connector`): the simulated world of `ct_actors.sim`, served by the
    simulator's own session code; for the whole pipeline under MockClock.
  They stay three because their jobs differ: a script asserts a dialogue, a rule host a
  timeline, the simulated world the ground truth of a generated population.
* DNS (`dns`): `FakeDnsServer`, a resolver look-alike on loopback (UDP and TCP) for the DNS
  client; `FakeDnsClient`, the same kind of table without sockets, for the MX resolver and
  DNSBL checks; `SimResolver`, the simulated world's MX answers for the pipeline.
* The store (`store`): `FakeStore` (the work queue), `MemoryUsageStore` (budgets),
  `MemoryVerifierLedger` (the verifier's ledger), in memory with the SQL's semantics.
* The verifier's vendor (`verifier`): `FakeMillionVerifier` / `open_fake_api`, MillionVerifier's
  API on loopback. Its script steps (`Answer`, `Hang`, `rate_limited()`...) are imported from
  `ct_actors.testing.verifier`: their names would clash with the SMTP script's here.

Everything waits with `trio.sleep` only (the loopback servers excepted, which use real sockets
on 127.0.0.0/8), so it runs under `trio.testing.MockClock(autojump_threshold=0)`. A double that
one test module alone needs (a store that fails on cue, a resolver that records) stays in that
module, usually as a subclass of one of these.
"""

from ct_actors.testing.connectors import (
    MailHostNet,
    ScriptedConnector,
    SimConnector,
    open_sim_connector,
)
from ct_actors.testing.dns import FakeDnsClient, FakeDnsServer, Records, SimResolver
from ct_actors.testing.smtp import (
    EHLO,
    HELO,
    MAIL,
    MAIL_FROM,
    Close,
    Event,
    Expect,
    Hang,
    MailHost,
    RcptRule,
    ScriptedServer,
    Send,
    Sleep,
    StartTls,
    Step,
    anon,
    closing,
    opening,
    rcpt,
    reply,
)
from ct_actors.testing.store import (
    Claimed,
    FakeStore,
    MemoryUsageStore,
    MemoryVerifierLedger,
    Report,
    Unavailable,
)
from ct_actors.testing.verifier import FakeMillionVerifier, open_fake_api

__all__ = [
    "EHLO",
    "HELO",
    "MAIL",
    "MAIL_FROM",
    "Claimed",
    "Close",
    "Event",
    "Expect",
    "FakeDnsClient",
    "FakeDnsServer",
    "FakeMillionVerifier",
    "FakeStore",
    "Hang",
    "MailHost",
    "MailHostNet",
    "MemoryUsageStore",
    "MemoryVerifierLedger",
    "RcptRule",
    "Records",
    "Report",
    "ScriptedConnector",
    "ScriptedServer",
    "Send",
    "SimConnector",
    "SimResolver",
    "Sleep",
    "StartTls",
    "Step",
    "Unavailable",
    "anon",
    "closing",
    "open_fake_api",
    "open_sim_connector",
    "opening",
    "rcpt",
    "reply",
]
