-- Accounts. Every event gets its author's user id; browser sessions are issued by the server and kept only as
-- the SHA-256 of their token. Today's names become guest users, and today's sessions are carried over by the
-- store's upgrade step after this migration (it hashes their tokens and fills in name keys, which need
-- Unicode tables SQL does not have), so nobody who was joined has to join again.

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    -- As shown.
    name TEXT NOT NULL,
    -- As compared: trimmed, NFKC-normalised and case-folded (see server::identity::name_key).
    name_key TEXT NOT NULL,
    -- guest | member | bot
    kind TEXT NOT NULL,
    admin INTEGER NOT NULL DEFAULT 0,
    -- argon2id, as a PHC string; members only.
    password_hash TEXT,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

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
    created_at INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX sessions_user ON sessions (user_id);

ALTER TABLE events ADD COLUMN user_id TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN user_kind TEXT NOT NULL DEFAULT 'guest';

-- One guest per name seen so far, in history or in a browser session, dated by its first appearance.
-- The id is a random version-4 uuid.
INSERT INTO users (id, name, name_key, kind, created_at)
SELECT lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2)
             || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(hex(randomblob(2)), 2)
             || '-' || hex(randomblob(6))),
       name, '', 'guest', MIN(at)
FROM (SELECT name, at FROM events UNION ALL SELECT name, updated_at FROM legacy_sessions WHERE name IS NOT NULL)
GROUP BY name;

CREATE INDEX users_by_name ON users (name);
UPDATE events SET user_id = (SELECT id FROM users WHERE users.name = events.name);
DROP INDEX users_by_name;
