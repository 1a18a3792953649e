-- Accounts. Every event gets its author's user id; browser sessions are issued by the server and kept only as
-- the SHA-256 of their token. Today's names become guest users and today's sessions are carried over, so
-- nobody who was joined has to join again. The store's upgrade step fills in the name keys (Unicode
-- case folding), as it does for SQLite.

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    -- As compared: trimmed, NFKC-normalised and case-folded (see server::identity::name_key).
    name_key TEXT NOT NULL,
    -- guest | member | bot
    kind TEXT NOT NULL,
    admin BOOLEAN NOT NULL DEFAULT FALSE,
    -- argon2id, as a PHC string; members only.
    password_hash TEXT,
    created_at BIGINT NOT NULL
);

-- A member's or bot's name is theirs alone. Guests' names are held by presence while they are online.
CREATE UNIQUE INDEX users_owned_name ON users (name_key) WHERE kind <> 'guest';

ALTER TABLE sessions RENAME TO legacy_sessions;

CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    -- Hex SHA-256 of the cookie's token: a stolen database holds no usable token.
    token_hash TEXT NOT NULL UNIQUE,
    user_id TEXT,
    -- guest | password | token: how the session's user proved who they are.
    via TEXT NOT NULL DEFAULT 'guest',
    device TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL
);

CREATE INDEX sessions_user ON sessions (user_id);

ALTER TABLE events ADD COLUMN user_id TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN user_kind TEXT NOT NULL DEFAULT 'guest';

INSERT INTO users (id, name, name_key, kind, created_at)
SELECT gen_random_uuid()::text, name, '', 'guest', MIN(at)
FROM (SELECT name, at FROM events UNION ALL SELECT name, updated_at FROM legacy_sessions WHERE name IS NOT NULL) AS seen
GROUP BY name;

UPDATE events SET user_id = users.id FROM users WHERE users.name = events.name;

INSERT INTO sessions (id, token_hash, user_id, via, created_at, last_seen_at)
SELECT gen_random_uuid()::text, encode(sha256(convert_to(s.token, 'UTF8')), 'hex'), u.id, 'guest',
       s.updated_at, s.updated_at
FROM legacy_sessions s JOIN users u ON u.name = s.name;

DROP TABLE legacy_sessions;

-- Presence is held by users now, and compared by name key. It is rebuilt by the running instances.
DROP TABLE presence;
CREATE TABLE presence (
    room TEXT NOT NULL,
    name_key TEXT NOT NULL,
    name TEXT NOT NULL,
    instance TEXT NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    -- The user holding the name, and their kind (for the leave line a heartbeat may announce).
    holder TEXT NOT NULL,
    holder_kind TEXT NOT NULL DEFAULT 'guest',
    PRIMARY KEY (room, name_key, instance)
);

CREATE INDEX presence_instance ON presence (instance);
