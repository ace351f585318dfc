-- The job table: one row per job, the same columns as the SQLite backend (serve_app/jobs/rows.py).
-- Times are seconds since the epoch (float8) from the database clock; nested fields are JSONB.
-- ``seq`` keeps insertion order as a tie-break (SQLite's rowid).
CREATE TABLE IF NOT EXISTS jobs (
    seq BIGSERIAL NOT NULL,
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    params JSONB,
    meta JSONB,
    progress DOUBLE PRECISION NOT NULL DEFAULT 0,
    stage TEXT,
    timings JSONB NOT NULL DEFAULT '{}',
    attempts JSONB NOT NULL DEFAULT '[]',
    error JSONB,
    result_path TEXT,
    owner TEXT,
    lease_until DOUBLE PRECISION,
    next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION
);

-- claimable(): active jobs in scheduling order.
CREATE INDEX IF NOT EXISTS jobs_sched ON jobs (priority DESC, created_at, seq)
    WHERE status IN ('queued', 'running');
-- list(): newest first, optionally by status.
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at DESC, seq DESC);
CREATE INDEX IF NOT EXISTS jobs_newest ON jobs (created_at DESC, seq DESC);
