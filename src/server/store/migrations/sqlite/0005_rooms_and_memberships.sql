-- Rooms besides general, and who is in them. Events already name their room by slug, so history written
-- before rooms existed stays general's, untouched. general itself has no row: everyone is in it.
CREATE TABLE directory (
    -- Derived from the name (lower-case letters and digits joined by '-'), or 'dm.' and a hash of the member
    -- set for a direct room, so a DM between the same people is found by its key alone.
    slug TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    topic TEXT NOT NULL DEFAULT '',
    -- public | private | direct
    kind TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    archived BOOLEAN NOT NULL DEFAULT FALSE
) WITHOUT ROWID;

CREATE INDEX directory_by_kind ON directory (kind, slug);

CREATE TABLE memberships (
    room TEXT NOT NULL,
    user_id TEXT NOT NULL,
    joined_at INTEGER NOT NULL,
    PRIMARY KEY (room, user_id)
) WITHOUT ROWID;

CREATE INDEX memberships_by_user ON memberships (user_id, room);

-- How far each user has read in each room (general too), so every device and tab shows the same unread
-- counts.
CREATE TABLE read_marks (
    user_id TEXT NOT NULL,
    room TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (user_id, room)
) WITHOUT ROWID;

-- What of each room notifies each user (everything | mentions | nothing); no row means mentions.
CREATE TABLE notify_levels (
    user_id TEXT NOT NULL,
    room TEXT NOT NULL,
    level TEXT NOT NULL,
    PRIMARY KEY (user_id, room)
) WITHOUT ROWID;
