-- 001_outreach: the outreach.* tables the Company Target gate reads and writes.
--
-- Runs once per database (ct_actors.schema_migrations), inside one transaction, under the
-- migration advisory lock. It must be safe on an existing production database whose tables
-- predate this daemon, so every statement is conditional: CREATE ... IF NOT EXISTS for new
-- databases, ADD COLUMN IF NOT EXISTS so an existing table gains what we need, and unique
-- indexes are only built after checking that the existing rows allow them (with an error that
-- names the table and the number of duplicates, instead of PostgreSQL's "could not create
-- unique index" with one sample key).
-- Constraints added to existing tables are NOT VALID first (they still guard every new write)
-- and validated only when the existing rows pass, so historical data never blocks an upgrade.

CREATE SCHEMA IF NOT EXISTS outreach;

-- ---------------------------------------------------------------------------------------------
-- outreach.outreach: the spine. Owned upstream; we only need (outreach_id, domain).
-- sovereign_id exists for upstream; the daemon never reads it (explicit column lists only).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS outreach.outreach (
    outreach_id  uuid PRIMARY KEY,
    sovereign_id uuid,
    domain       varchar(255),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE outreach.outreach ADD COLUMN IF NOT EXISTS domain varchar(255);

-- The claim walks the spine in outreach_id order and every lookup is by outreach_id; a spine
-- without any index leading on outreach_id would turn each claim into a full scan.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1
        FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = 'outreach.outreach'::regclass
          AND a.attname = 'outreach_id'
          AND i.indpred IS NULL
    ) THEN
        CREATE INDEX outreach_outreach_id_ct_idx ON outreach.outreach (outreach_id);
    END IF;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- outreach.company_target: one row per outreach_id; PASS = execution_status 'ready'.
-- ---------------------------------------------------------------------------------------------
DO $$
DECLARE
    spine_is_unique boolean;
BEGIN
    IF to_regclass('outreach.company_target') IS NULL THEN
        CREATE TABLE outreach.company_target (
            outreach_id       uuid PRIMARY KEY,
            company_unique_id text,
            email_method      text,
            method_type       text,
            confidence_score  numeric(5, 4),
            execution_status  text NOT NULL DEFAULT 'pending',
            imo_completed_at  timestamptz,
            is_catchall       boolean,
            domain_normalised text,
            mx_host           text,
            evidence          jsonb,
            created_at        timestamptz NOT NULL DEFAULT now(),
            updated_at        timestamptz NOT NULL DEFAULT now()
        );
        -- The FK needs a unique key on the spine; an upstream spine without one still works,
        -- we just cannot declare the relationship.
        SELECT EXISTS (
            SELECT 1
            FROM pg_index i
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            WHERE i.indrelid = 'outreach.outreach'::regclass
              AND i.indisunique AND i.indnkeyatts = 1 AND i.indpred IS NULL
              AND a.attname = 'outreach_id'
        ) INTO spine_is_unique;
        IF spine_is_unique THEN
            ALTER TABLE outreach.company_target
                ADD CONSTRAINT company_target_outreach_id_fkey
                FOREIGN KEY (outreach_id) REFERENCES outreach.outreach (outreach_id);
        END IF;
    END IF;
END
$$;

-- An existing production table gains every column we write or filter on.
ALTER TABLE outreach.company_target
    ADD COLUMN IF NOT EXISTS outreach_id       uuid,
    ADD COLUMN IF NOT EXISTS company_unique_id text,
    ADD COLUMN IF NOT EXISTS email_method      text,
    ADD COLUMN IF NOT EXISTS method_type       text,
    ADD COLUMN IF NOT EXISTS confidence_score  numeric(5, 4),
    ADD COLUMN IF NOT EXISTS execution_status  text DEFAULT 'pending',
    ADD COLUMN IF NOT EXISTS imo_completed_at  timestamptz,
    ADD COLUMN IF NOT EXISTS is_catchall       boolean,
    ADD COLUMN IF NOT EXISTS domain_normalised text,
    ADD COLUMN IF NOT EXISTS mx_host           text,
    ADD COLUMN IF NOT EXISTS evidence          jsonb,
    ADD COLUMN IF NOT EXISTS created_at        timestamptz DEFAULT now(),
    ADD COLUMN IF NOT EXISTS updated_at        timestamptz DEFAULT now();

-- Doctrine: operate on outreach_id only, so company_unique_id must be nullable (we never set it).
DO $$
BEGIN
    IF EXISTS (
        SELECT 1
        FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
        WHERE i.indrelid = 'outreach.company_target'::regclass
          AND i.indisprimary
          AND a.attname = 'company_unique_id'
    ) THEN
        RAISE EXCEPTION 'outreach.company_target: company_unique_id is part of the primary key, '
            'so it cannot be made nullable; ct-actors writes rows keyed by outreach_id only. '
            'Move the primary key to outreach_id (ADR required) before running ct-actors.';
    END IF;
    IF EXISTS (
        SELECT 1
        FROM pg_attribute
        WHERE attrelid = 'outreach.company_target'::regclass
          AND attname = 'company_unique_id'
          AND attnotnull
    ) THEN
        ALTER TABLE outreach.company_target ALTER COLUMN company_unique_id DROP NOT NULL;
    END IF;
END
$$;

-- ON CONFLICT (outreach_id) needs a non-partial unique index on exactly (outreach_id).
DO $$
DECLARE
    dup_ids bigint;
    dup_rows bigint;
BEGIN
    IF NOT EXISTS (
        SELECT 1
        FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = 'outreach.company_target'::regclass
          AND i.indisunique AND i.indnkeyatts = 1 AND i.indpred IS NULL
          AND a.attname = 'outreach_id'
    ) THEN
        SELECT count(*), coalesce(sum(n), 0) INTO dup_ids, dup_rows
        FROM (
            SELECT count(*) AS n
            FROM outreach.company_target
            WHERE outreach_id IS NOT NULL
            GROUP BY outreach_id
            HAVING count(*) > 1
        ) d;
        IF dup_ids > 0 THEN
            RAISE EXCEPTION 'outreach.company_target has % outreach_id values with duplicate rows '
                '(% rows in total); cannot create the unique index on (outreach_id) that ct-actors '
                'requires (one row per outreach_id). Resolve the duplicates upstream first.',
                dup_ids, dup_rows;
        END IF;
        CREATE UNIQUE INDEX company_target_outreach_id_uq
            ON outreach.company_target (outreach_id);
    END IF;
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'outreach.company_target'::regclass
          AND conname = 'company_target_execution_status_check'
    ) THEN
        ALTER TABLE outreach.company_target
            ADD CONSTRAINT company_target_execution_status_check
            CHECK (execution_status IN ('pending', 'ready', 'failed', 'blocked')) NOT VALID;
        BEGIN
            ALTER TABLE outreach.company_target
                VALIDATE CONSTRAINT company_target_execution_status_check;
        EXCEPTION WHEN check_violation THEN
            RAISE NOTICE 'outreach.company_target: existing rows have execution_status values '
                'outside (pending, ready, failed, blocked); constraint kept NOT VALID '
                '(it still applies to every new or updated row)';
        END;
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'outreach.company_target'::regclass
          AND conname = 'company_target_confidence_score_check'
    ) THEN
        ALTER TABLE outreach.company_target
            ADD CONSTRAINT company_target_confidence_score_check
            CHECK (confidence_score >= 0 AND confidence_score <= 1) NOT VALID;
        BEGIN
            ALTER TABLE outreach.company_target
                VALIDATE CONSTRAINT company_target_confidence_score_check;
        EXCEPTION WHEN check_violation THEN
            RAISE NOTICE 'outreach.company_target: existing rows have confidence_score outside '
                '[0, 1]; constraint kept NOT VALID';
        END;
    END IF;
END
$$;

-- The runbook's pass-rate query filters on imo_completed_at.
CREATE INDEX IF NOT EXISTS company_target_imo_completed_at_idx
    ON outreach.company_target (imo_completed_at);

-- ---------------------------------------------------------------------------------------------
-- outreach.company_target_errors: terminal FAILs. error_id is a row number, not an entity id.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS outreach.company_target_errors (
    error_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    outreach_id     uuid NOT NULL,
    pipeline_stage  text,
    failure_code    text,
    blocking_reason text,
    severity        text,
    imo_stage       char(1),
    retry_allowed   boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz,
    evidence        jsonb
);

ALTER TABLE outreach.company_target_errors
    ADD COLUMN IF NOT EXISTS error_id        bigint GENERATED ALWAYS AS IDENTITY,
    ADD COLUMN IF NOT EXISTS outreach_id     uuid,
    ADD COLUMN IF NOT EXISTS pipeline_stage  text,
    ADD COLUMN IF NOT EXISTS failure_code    text,
    ADD COLUMN IF NOT EXISTS blocking_reason text,
    ADD COLUMN IF NOT EXISTS severity        text,
    ADD COLUMN IF NOT EXISTS imo_stage       char(1),
    ADD COLUMN IF NOT EXISTS retry_allowed   boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS created_at      timestamptz DEFAULT now(),
    ADD COLUMN IF NOT EXISTS resolved_at     timestamptz,
    ADD COLUMN IF NOT EXISTS evidence        jsonb;

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'outreach.company_target_errors'::regclass
          AND conname = 'company_target_errors_failure_code_check'
    ) THEN
        ALTER TABLE outreach.company_target_errors
            ADD CONSTRAINT company_target_errors_failure_code_check
            CHECK (failure_code IN (
                'CT-I-NOT-FOUND', 'CT-I-NO-DOMAIN', 'CT-I-ALREADY-PROCESSED',
                'CT-M-NO-MX', 'CT-M-NO-PATTERN', 'CT-M-SMTP-FAIL', 'CT-M-VERIFY-FAIL'
            )) NOT VALID;
        BEGIN
            ALTER TABLE outreach.company_target_errors
                VALIDATE CONSTRAINT company_target_errors_failure_code_check;
        EXCEPTION WHEN check_violation THEN
            RAISE NOTICE 'outreach.company_target_errors: existing rows have failure codes '
                'outside the runbook''s seven; constraint kept NOT VALID';
        END;
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'outreach.company_target_errors'::regclass
          AND conname = 'company_target_errors_imo_stage_check'
    ) THEN
        ALTER TABLE outreach.company_target_errors
            ADD CONSTRAINT company_target_errors_imo_stage_check
            CHECK (imo_stage IN ('I', 'M')) NOT VALID;
        BEGIN
            ALTER TABLE outreach.company_target_errors
                VALIDATE CONSTRAINT company_target_errors_imo_stage_check;
        EXCEPTION WHEN check_violation THEN
            RAISE NOTICE 'outreach.company_target_errors: existing rows have imo_stage outside '
                '(I, M); constraint kept NOT VALID';
        END;
    END IF;
END
$$;

-- "Exactly one open terminal FAIL per record". Also the index the claim probes.
DO $$
DECLARE
    dup_ids bigint;
    dup_rows bigint;
BEGIN
    IF to_regclass('outreach.company_target_errors_open_uq') IS NULL THEN
        SELECT count(*), coalesce(sum(n), 0) INTO dup_ids, dup_rows
        FROM (
            SELECT count(*) AS n
            FROM outreach.company_target_errors
            WHERE resolved_at IS NULL AND outreach_id IS NOT NULL
            GROUP BY outreach_id
            HAVING count(*) > 1
        ) d;
        IF dup_ids > 0 THEN
            RAISE EXCEPTION 'outreach.company_target_errors has % outreach_id values with more '
                'than one open (resolved_at IS NULL) error row (% rows in total); cannot create '
                'the unique index enforcing one open terminal FAIL per record. Set resolved_at '
                'on the superseded rows first.', dup_ids, dup_rows;
        END IF;
        CREATE UNIQUE INDEX company_target_errors_open_uq
            ON outreach.company_target_errors (outreach_id)
            WHERE resolved_at IS NULL;
    END IF;
END
$$;

-- The runbook's "recent failures" (ORDER BY created_at DESC LIMIT 100) and "failure
-- distribution" (GROUP BY failure_code over 7 days, index-only) queries.
CREATE INDEX IF NOT EXISTS company_target_errors_created_at_idx
    ON outreach.company_target_errors (created_at, failure_code);
