-- legacy-version: 1
-- Tokens ended by logout before their expiry.
CREATE TABLE revoked_tokens (
    token_id   text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
