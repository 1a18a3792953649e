-- Bots: users of kind 'bot' that speak through the API with a token. The token is kept only as its
-- SHA-256 (NULL once revoked); the webhook secret is kept as is, since signing needs it.
CREATE TABLE bots (
    user_id TEXT PRIMARY KEY,
    token_hash TEXT UNIQUE,
    webhook_secret TEXT NOT NULL,
    -- Empty: the bot is called by nobody.
    webhook_url TEXT NOT NULL DEFAULT '',
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Webhook calls still to make, written in the same transaction as the message that causes them, so a
-- restart loses none. The id is the call's idempotency key: the same on every attempt.
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    bot_id TEXT NOT NULL,
    room TEXT NOT NULL,
    message_id TEXT NOT NULL,
    -- pending | done | failed
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    -- Not before this time (ms): the retry's backoff, or the lease of an instance making the call.
    next_at INTEGER NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_at);
CREATE INDEX webhook_deliveries_by_bot ON webhook_deliveries (bot_id, state);
