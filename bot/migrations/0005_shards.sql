-- lattice: backward-compatible
-- Sharding: each shard (SHARD_ID of SHARD_COUNT) has its own leader lock, stored session (already keyed
-- by shard_id), leader heartbeat and reply claims, so each shard hands over on its own.
-- A reply claim belongs to the shard that took it: a leader re-takes only its own shard's expired claims.
-- Code built before this migration claims without a shard: it ran one shard, shard 0.
ALTER TABLE handled_messages ADD COLUMN shard_id INTEGER NOT NULL DEFAULT 0;
DROP INDEX handled_messages_open;
CREATE INDEX handled_messages_open ON handled_messages (shard_id, lease_until) WHERE replied_at IS NULL;

-- A stored session belongs to a shard of a given count: after SHARD_COUNT changes it is not resumed
-- (its guilds are no longer the shard's), only its last message id still says where to backfill from.
ALTER TABLE gateway_sessions ADD COLUMN shard_count INTEGER NOT NULL DEFAULT 1;

-- The heartbeat row of shard N is id N + 1 (code built before this migration writes id 1: shard 0).
ALTER TABLE gateway_leader DROP CONSTRAINT gateway_leader_id_check;
ALTER TABLE gateway_leader ADD CONSTRAINT gateway_leader_id_check CHECK (id >= 1);
