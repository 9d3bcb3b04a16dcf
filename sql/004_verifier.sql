-- 004_verifier: the Tier-2 EmailVerifier's (TOOL-019) ledger and monthly spend, shared by every
-- daemon on the database. See ct_actors/verify/gate.py for the rules these tables enforce.

-- One row per address ever sent (or about to be sent) to the vendor: the registry's
-- "max_attempts_per_email: 1" across daemons and restarts, and the verdict cache
-- (cache_ttl_days). The row is inserted BEFORE the call (INSERT ... ON CONFLICT DO NOTHING), so of
-- two daemons wanting one address exactly one calls; the verdict is filled in after.
--   pending      a call is in flight (or its owner died during it: it counts as the attempt)
--   done         the vendor's verdict, reused while finished_at + cache TTL is in the future
--   unavailable  the attempt was made and may have been billed, but gave no verdict
-- A row whose attempt provably never reached the vendor is deleted instead (the address may be
-- tried again later). Rows are never deleted otherwise: they are the one-attempt memory.
-- The address is a sample person's (personal data) or a role address: prune by policy if
-- retention requires it (deleting a row allows one more paid attempt for that address).
CREATE TABLE IF NOT EXISTS ct_actors.verifier_ledger (
    address       text PRIMARY KEY CHECK (position('@' IN address) > 1),
    owner         text NOT NULL,
    status        text NOT NULL CHECK (status IN ('pending', 'done', 'unavailable')),
    attempts      integer NOT NULL DEFAULT 1 CHECK (attempts >= 1),
    attempted_at  timestamptz NOT NULL,
    finished_at   timestamptz,
    verdict       text CHECK (verdict IN ('valid', 'invalid', 'unknown', 'catch_all', 'disposable')),
    result        text,       -- the vendor's raw `result` (ok, catch_all, ...)
    credits_after bigint,     -- the vendor's credits left after this verification
    cost          numeric(12, 6) NOT NULL DEFAULT 0 CHECK (cost >= 0),  -- estimated, per address
    detail        text,       -- vendor subresult, or why there is no verdict (redacted)
    CHECK ((status = 'done') = (verdict IS NOT NULL))
);

-- "What did we verify this month?" and pruning by age.
CREATE INDEX IF NOT EXISTS verifier_ledger_attempted_idx ON ct_actors.verifier_ledger (attempted_at);

-- The monthly money: one row per (tool, UTC calendar month). Each request first adds one call and
-- estimated_cost_per_call here with a single guarded upsert that never takes `spent` past
-- monthly_budget_cap; a request the vendor provably did not bill is refunded. Kept across restarts
-- and shared by all daemons, like ct_actors.tool_usage (which counts the per_month *calls* limit;
-- this table counts the *money* cap).
CREATE TABLE IF NOT EXISTS ct_actors.verifier_spend (
    tool_id     text NOT NULL,
    month_start timestamptz NOT NULL,  -- the 1st of the month, 00:00 UTC
    calls       bigint NOT NULL DEFAULT 0 CHECK (calls >= 0),
    spent       numeric(14, 6) NOT NULL DEFAULT 0 CHECK (spent >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tool_id, month_start)
);
