"""Tier-2 EmailVerifier (TOOL-019): a second opinion from MillionVerifier on weak PASSes.

* `client`: `MillionVerifierClient`, one GET per address over an `httpx.AsyncClient`;
* `answer`: the vendor's answer, parsed (`parse_answer` -> `VerifierAnswer` with a
  `VendorVerdict`), and `Retry-After` (pure);
* `errors`: the client's typed errors (`VerifierUnavailable`, `VerifierRejected`);
* `fake_api`: a scriptable local fake of the vendor's API, for tests and the demo;
* `ledger`: the persisted one-attempt-per-address ledger and monthly spend (protocol + rows);
* `memory`: the ledger in memory (MockClock tests, demo);
* `decision`: what the gate decides (`VerifyDecision`) and the pure reading of a ledger row;
* `stops`: the budget kill switch, the halt after a refusal, the calendar pause;
* `statistics`: the gate's counters, as a frozen `VerifierStatistics`;
* `gate`: `EmailVerifier.check(address)`, the registry's gate around the client;
* `factory`: the daemon's EmailVerifier from the registry entry and the environment's key;
* `policy`: which address to verify for a weak PASS, and what the verdict does to it.

Import the submodules directly; this package module stays empty so that `ct_actors.db.store`
can import `ct_actors.verify.ledger` without pulling in the rest.
"""
