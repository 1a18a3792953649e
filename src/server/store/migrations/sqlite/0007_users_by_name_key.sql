-- Every join asks who owns a name: a member, a bot, or a banned guest (`owner_of`). The only index on
-- name_key was the partial one of owned names, which a banned guest is not in, so each join read the
-- whole users table: with 10,000 guests, a join storm spent most of its time scanning it.
CREATE INDEX users_by_name_key ON users (name_key);
