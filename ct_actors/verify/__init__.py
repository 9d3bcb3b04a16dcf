"""Tier-2 EmailVerifier (TOOL-019): a second opinion from MillionVerifier on weak PASSes.

* `client`: `MillionVerifierClient`, one GET per address over an `httpx.AsyncClient`;
* `answer`: the vendor's answer, parsed (`parse_answer` -> `VerifierAnswer` with a
  `VendorVerdict`), and `Retry-After` (pure);
* `errors`: the client's typed errors (`VerifierUnavailable`, `VerifierRejected`);
* `ledger`: the persisted one-attempt-per-address ledger and monthly spend (protocol + rows);
* `decision`: what the gate decides (`VerifyDecision`) and the pure reading of a ledger row;
* `stops`: the budget kill switch, the halt after a refusal, the calendar pause;
* `statistics`: the gate's counters, as a frozen `VerifierStatistics`;
* `pg_ledger`: the ledger in PostgreSQL (`PgVerifierLedger`, on the database driver);
* `gate`: `EmailVerifier.check(address)`, the registry's gate around the client;
* `factory`: the daemon's EmailVerifier from the registry entry and the environment's key;
* `policy`: which address to verify for a weak PASS, and what the verdict does to it.

The test doubles (the vendor's API on loopback, the ledger in memory) are in `ct_actors.testing`.

Import the submodules directly; this package module stays empty, so that importing one (say
`ledger`, standard library only) pulls in nothing else.
"""
