-- Who may come in (CONFAB_ACCESS=invite): invite links an admin makes, each with an expiry and a number of
-- uses, kept as the SHA-256 of their code; and the sessions that came in through one.
CREATE TABLE invites (
    code_hash TEXT PRIMARY KEY,
    created_by TEXT NOT NULL,
    uses_left BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

ALTER TABLE sessions ADD COLUMN admitted BOOLEAN NOT NULL DEFAULT FALSE;

-- One-time sign-in links (moving to a new device, or an admin's way back in for a member who forgot their
-- password), kept as the SHA-256 of their token; valid for minutes, usable once.
CREATE TABLE signin_links (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
