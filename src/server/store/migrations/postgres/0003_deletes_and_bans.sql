-- Deleting messages and banning users. A `delete` event names the message it deletes in `target`; the
-- deleted message keeps its place in the sequence as kind 'deleted', with its text gone. A banned user's
-- sessions are ended and their name stays locked.
ALTER TABLE events ADD COLUMN target TEXT;
ALTER TABLE users ADD COLUMN banned BOOLEAN NOT NULL DEFAULT FALSE;

-- Users that an embedding app vouches for with a signed token: its own id for them (the `sub` claim).
ALTER TABLE users ADD COLUMN external_id TEXT;
CREATE UNIQUE INDEX users_external_id ON users (external_id) WHERE external_id IS NOT NULL;
