-- lattice: backward-compatible
-- Crash safety. A reply claim becomes a lease: `lease_until` (renewed while the reply is worked on)
-- and `replied_at`; a leader re-takes a claim whose lease ran out before the reply was posted.
-- Code built before this migration inserts claims without a lease: NULL never expires.
ALTER TABLE handled_messages ADD COLUMN lease_until TIMESTAMPTZ, ADD COLUMN replied_at TIMESTAMPTZ;
UPDATE handled_messages SET replied_at = handled_at;
CREATE INDEX handled_messages_open ON handled_messages (lease_until) WHERE replied_at IS NULL;

-- The leader checkpoints its session continuously (not only on shutdown), with the newest main-channel
-- message id below which everything is stored: a successor that cannot resume backfills after it.
ALTER TABLE gateway_sessions ADD COLUMN last_message_id BIGINT;

-- The leader's heartbeat while its gateway is live: a standby that sees none for a while says so.
CREATE TABLE gateway_leader (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    seen_at  TIMESTAMPTZ NOT NULL
);
