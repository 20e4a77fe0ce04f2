-- legacy-version: 1
CREATE TABLE conversations (
    id         uuid PRIMARY KEY,
    user_id    text NOT NULL,
    title      text NOT NULL,
    turn_count integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversations_user_updated_idx ON conversations (user_id, updated_at DESC, id DESC);
