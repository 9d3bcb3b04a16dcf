-- 006_outcome_log: committed outcomes whose canonical `outcome` log line is not known to have
-- been written yet (issue 14).
--
-- The writer commits a batch, then logs one `outcome` line per record. A SIGKILL between the two
-- leaves committed outcomes without their line, and the journalctl | jq recipes of
-- docs/monitoring.md undercount. So the write statement also inserts one row here per PASS/FAIL it
-- wrote (same statement, same transaction: a row exists exactly when its outcome committed), and
-- the writer deletes the batch's rows once their lines are written. A row still here is an
-- outcome whose line may be missing: on start a daemon logs the rows of its own name (a previous
-- incarnation with the same daemon.owner) and rows older than the lease time of any name, marked
-- `recovered`, then deletes them. The line is rebuilt from the outcome row itself
-- (outreach.company_target / company_target_errors); only what is not kept there is stored.
-- Daemon bookkeeping, so schema ct_actors; no FK to the outcome tables (an operator may resolve
-- or delete outcome rows; a row here without its outcome is logged as gone, then dropped).

CREATE TABLE IF NOT EXISTS ct_actors.outcome_log (
    outreach_id  uuid PRIMARY KEY,
    owner        text NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now(),
    -- claim to commit, seconds (the line's `duration`)
    duration     real
);

-- The start-up recovery reads one owner's rows (and the oldest rows of any owner).
CREATE INDEX IF NOT EXISTS outcome_log_owner_idx ON ct_actors.outcome_log (owner, committed_at);
