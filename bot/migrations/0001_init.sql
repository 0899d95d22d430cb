-- Episodic memory: every message seen in the main channel, the bot's own replies included.
CREATE TABLE messages (
    id          BIGINT PRIMARY KEY,          -- Discord message id (snowflake): dedupes repeated events
    channel_id  BIGINT NOT NULL,
    author_id   BIGINT NOT NULL,
    author_name TEXT NOT NULL,
    is_bot      BOOLEAN NOT NULL,
    content     TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX messages_channel_id_id ON messages (channel_id, id DESC);

-- One row per message the bot took responsibility for answering: the same event twice is handled once.
CREATE TABLE handled_messages (
    message_id BIGINT PRIMARY KEY,
    handled_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every LLM call, successful or not.
CREATE TABLE prompt_audits (
    id                BIGSERIAL PRIMARY KEY,
    message_id        BIGINT NOT NULL,
    provider          TEXT NOT NULL,
    model             TEXT NOT NULL,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    cost_usd          DOUBLE PRECISION,
    latency_ms        INTEGER NOT NULL,
    finish_reason     TEXT,
    error             TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX prompt_audits_message_id ON prompt_audits (message_id);
