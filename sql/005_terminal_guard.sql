-- 005_terminal_guard: exactly one terminal outcome per outreach_id, enforced by the database.
--
-- The unique indexes of 001 already allow at most one company_target row and at most one open
-- error row per record. What they cannot say is that the two tables agree, or that a terminal
-- row stays as written. Several daemons write to one database (each behind its own lease, but
-- a lease can lapse under a paused process), so the schema itself refuses:
--   * an open error row (a FAIL) for a record whose company_target row is 'ready' (a PASS);
--   * a company_target row turning 'ready' while the record has an open error row;
--   * rewriting a terminal company_target row (ready/failed) into another terminal outcome.
-- The daemon's write statement never attempts any of these (it skips terminal records); the
-- triggers make the rule hold for any writer, whatever the timing. An operator who must correct
-- a terminal row on purpose does it in a transaction with
--   SET LOCAL ct_actors.allow_terminal_rewrite = 'on';
-- Resolving an error (resolved_at) is always allowed: the runbook's ADR path.
-- Triggers take a row lock on the other table's row (FOR KEY SHARE / FOR UPDATE) so two
-- concurrent writers of opposite outcomes serialise instead of both passing the check.

-- SECURITY DEFINER: the checks lock rows of the other table (FOR KEY SHARE needs UPDATE
-- rights), which the daemon's role need not have there; a fixed search_path keeps that safe.
CREATE OR REPLACE FUNCTION ct_actors.guard_error_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.resolved_at IS NULL AND EXISTS (
        SELECT 1 FROM outreach.company_target ct
        WHERE ct.outreach_id = NEW.outreach_id AND ct.execution_status = 'ready'
        FOR KEY SHARE
    ) AND coalesce(current_setting('ct_actors.allow_terminal_rewrite', true), '') <> 'on' THEN
        RAISE EXCEPTION 'outreach_id % already PASSed (company_target ready): a FAIL row would '
                        'be a second terminal outcome', NEW.outreach_id
            USING ERRCODE = 'unique_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION ct_actors.guard_target_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF coalesce(current_setting('ct_actors.allow_terminal_rewrite', true), '') = 'on' THEN
        RETURN NEW;
    END IF;
    -- BEFORE INSERT fires for every proposed row of an INSERT ... ON CONFLICT, before the
    -- conflict is found. When the row exists the statement becomes an UPDATE (or nothing, per
    -- its WHERE), and the UPDATE branch of this trigger judges that.
    IF TG_OP = 'INSERT' AND EXISTS (
        SELECT 1 FROM outreach.company_target ct WHERE ct.outreach_id = NEW.outreach_id
    ) THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE'
       AND OLD.execution_status IN ('ready', 'failed')
       AND NEW.execution_status IN ('ready', 'failed')
       AND (NEW.execution_status, NEW.email_method, NEW.method_type, NEW.confidence_score,
            NEW.is_catchall)
           IS DISTINCT FROM
           (OLD.execution_status, OLD.email_method, OLD.method_type, OLD.confidence_score,
            OLD.is_catchall) THEN
        RAISE EXCEPTION 'outreach_id % already has a terminal outcome (%): not rewritten',
                        NEW.outreach_id, OLD.execution_status
            USING ERRCODE = 'unique_violation';
    END IF;
    IF NEW.execution_status = 'ready' AND EXISTS (
        SELECT 1 FROM outreach.company_target_errors e
        WHERE e.outreach_id = NEW.outreach_id AND e.resolved_at IS NULL
        FOR KEY SHARE
    ) THEN
        RAISE EXCEPTION 'outreach_id % already FAILed (open error row): a PASS would be a '
                        'second terminal outcome', NEW.outreach_id
            USING ERRCODE = 'unique_violation';
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS ct_actors_terminal_guard ON outreach.company_target_errors;
CREATE TRIGGER ct_actors_terminal_guard
    BEFORE INSERT OR UPDATE OF resolved_at, outreach_id ON outreach.company_target_errors
    FOR EACH ROW EXECUTE FUNCTION ct_actors.guard_error_row();

DROP TRIGGER IF EXISTS ct_actors_terminal_guard ON outreach.company_target;
CREATE TRIGGER ct_actors_terminal_guard
    BEFORE INSERT OR UPDATE ON outreach.company_target
    FOR EACH ROW EXECUTE FUNCTION ct_actors.guard_target_row();
