-- 002_ct_actors: the daemon's own bookkeeping. Lives in schema ct_actors, never in outreach.*,
-- so the shared outreach tables only ever hold business outcomes.
-- (ct_actors.schema_migrations is created by the migration runner itself, before any file.)

CREATE SCHEMA IF NOT EXISTS ct_actors;

-- One row per outreach_id some daemon has claimed and not yet finished.
--   * live lease:      expires_at > now()  -> owned by `owner`, nobody else may claim it
--   * expired lease:   expires_at <= now() -> claimable by anyone (the owner crashed or released)
--   * deferred:        not_before > now()  -> not claimable by anyone until then (our resolver was
--                      down, our IP blocklisted, ...); the record is still pending, not failed
-- The row is deleted when a terminal outcome is written. Claims lock the spine rows with
-- SKIP LOCKED and upsert here with a guard, so several daemons can share one database.
-- No FK to the spine on purpose: the spine is upstream's and may be rewritten under us.
CREATE TABLE IF NOT EXISTS ct_actors.lease (
    outreach_id uuid PRIMARY KEY,
    owner       text NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    attempts    integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    not_before  timestamptz,
    last_reason text
);

-- release(owner) on shutdown and operator queries ("what does daemon X hold?").
CREATE INDEX IF NOT EXISTS lease_owner_idx ON ct_actors.lease (owner);
