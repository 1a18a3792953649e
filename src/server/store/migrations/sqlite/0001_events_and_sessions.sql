-- Events of every room, in the room's sequence order. (room, id) is unique: a client's retry of the
-- same message id is recognised instead of stored twice.
CREATE TABLE IF NOT EXISTS events (
    room TEXT NOT NULL,
    seq INTEGER NOT NULL,
    id TEXT NOT NULL,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;

CREATE UNIQUE INDEX IF NOT EXISTS events_room_id ON events (room, id);

-- Browser sessions (the cookie's token) and the name each has joined under.
CREATE TABLE IF NOT EXISTS sessions (
    token TEXT PRIMARY KEY,
    name TEXT,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
