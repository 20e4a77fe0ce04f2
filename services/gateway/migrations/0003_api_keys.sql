-- API keys for services and scripts (services/gateway/api_keys.py). Only the sha256 of a key is kept;
-- the key itself is shown once, at creation. Revoked keys stay as a record (revoked_at), unusable.
CREATE TABLE api_keys (
    id                 uuid PRIMARY KEY,
    user_id            uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name               text NOT NULL,
    secret_hash        text NOT NULL,
    access             text NOT NULL CHECK (access IN ('read', 'write')),
    chats_per_minute   integer CHECK (chats_per_minute > 0),
    uploads_per_minute integer CHECK (uploads_per_minute > 0),
    created_at         timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz,
    revoked_at         timestamptz,
    last_used_at       timestamptz
);
CREATE INDEX api_keys_user_idx ON api_keys (user_id, created_at DESC);
