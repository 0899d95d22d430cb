-- lattice: backward-compatible
-- Gateway session stored on shutdown so the next process can resume instead of re-identifying.
CREATE TABLE gateway_sessions (
    shard_id   INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    sequence   BIGINT NOT NULL,
    resume_url TEXT,
    stored_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
