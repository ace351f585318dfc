-- Tenants, retention marks, the webhook outbox and request keys (issue 8; serve_app/jobs/outbox.py).
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS tenant text NOT NULL DEFAULT 'default';
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS expired_at double precision;
CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs (tenant, status);

CREATE TABLE IF NOT EXISTS webhook_outbox (
    id text PRIMARY KEY,
    job_id text NOT NULL,
    tenant text NOT NULL,
    url text NOT NULL,
    body bytea NOT NULL,
    status text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_at double precision NOT NULL,
    last_error text,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON webhook_outbox (status, next_at);
CREATE INDEX IF NOT EXISTS outbox_job ON webhook_outbox (job_id);

CREATE TABLE IF NOT EXISTS request_keys (
    scope text PRIMARY KEY,
    fingerprint text NOT NULL,
    job_id text NOT NULL,
    expires_at double precision NOT NULL
);
