-- One row per room holding the last sequence number handed out. Every append locks this row for the length
-- of its transaction, so appends to a room commit one after another and take consecutive numbers: a reader
-- that sees seq N can already see every seq below N (commit order), and a rolled-back append leaves no gap.
CREATE TABLE IF NOT EXISTS rooms (
    room TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL DEFAULT 0
);

-- Events of every room, in the room's sequence order. (room, id) is unique: a client's retry of the same
-- message id, to this instance or another, is recognised instead of stored twice.
CREATE TABLE IF NOT EXISTS events (
    room TEXT NOT NULL,
    seq BIGINT NOT NULL,
    id TEXT NOT NULL,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (room, seq)
);

CREATE UNIQUE INDEX IF NOT EXISTS events_room_id ON events (room, id);

-- Browser sessions (the cookie's token) and the name each has joined under.
CREATE TABLE IF NOT EXISTS sessions (
    token TEXT PRIMARY KEY,
    name TEXT,
    updated_at BIGINT NOT NULL
);

-- Running Confab instances. Each refreshes seen_at on a heartbeat; one that stops (crashed, partitioned)
-- is considered gone once seen_at is older than the time-to-live, and its users with it.
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY,
    seen_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Who is connected where: a name is held by one browser session, possibly through several instances.
CREATE TABLE IF NOT EXISTS presence (
    room TEXT NOT NULL,
    name TEXT NOT NULL,
    instance TEXT NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    session TEXT NOT NULL,
    PRIMARY KEY (room, name, instance)
);

CREATE INDEX IF NOT EXISTS presence_instance ON presence (instance);
