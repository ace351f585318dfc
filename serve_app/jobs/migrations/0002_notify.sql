-- Wake the dispatchers when a job becomes queued: created, released on drain, or requeued for a
-- retry. pg_notify inside the writing transaction is delivered at COMMIT (never for a rollback),
-- and identical notifications of one transaction are folded into one.
CREATE OR REPLACE FUNCTION lipserve_jobs_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'queued' AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM 'queued') THEN
        PERFORM pg_notify('lipserve_jobs', NEW.id);
    END IF;
    RETURN NULL;
END
$$;

-- DROP + CREATE rather than CREATE OR REPLACE TRIGGER (PostgreSQL >= 14 only); both run in the
-- migration's transaction, so no write ever sees the table without its trigger.
DROP TRIGGER IF EXISTS jobs_notify ON jobs;
CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE OF status ON jobs
    FOR EACH ROW EXECUTE FUNCTION lipserve_jobs_notify();
