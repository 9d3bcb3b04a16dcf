"""Tier-2 EmailVerifier (TOOL-019): a second opinion from MillionVerifier on weak PASSes.

* `client`: `MillionVerifierClient`, a small HTTP/1.1 GET client over trio streams, and the pure
  `parse_answer`;
* `fake_api`: a scriptable local fake of the vendor's API, for tests and the demo;
* `ledger`: the persisted one-attempt-per-address ledger and monthly spend (protocol + rows);
* `memory`: the ledger in memory (MockClock tests, demo);
* `pg_ledger`: the ledger in PostgreSQL (`PgVerifierLedger`, on the database driver);
* `gate`: `EmailVerifier.check(address)`, the registry's gate around the client;
* `policy`: which address to verify for a weak PASS, and what the verdict does to it.

Import the submodules directly; this package module stays empty, so that importing one (say
`ledger`, standard library only) pulls in nothing else.
"""
