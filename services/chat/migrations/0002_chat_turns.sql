-- legacy-version: 1
CREATE TABLE chat_turns (
    id                uuid PRIMARY KEY,
    conversation_id   uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id           text NOT NULL,
    seq               integer NOT NULL,
    query             text NOT NULL,
    standalone_query  text NOT NULL,
    answer            text NOT NULL,
    sources           jsonb NOT NULL DEFAULT '[]',
    context           jsonb NOT NULL DEFAULT '[]',
    chat_context_used boolean NOT NULL DEFAULT false,
    model             text NOT NULL,
    retrieval_ms      double precision NOT NULL DEFAULT 0,
    answer_ms         double precision NOT NULL DEFAULT 0,
    storage_ms        double precision NOT NULL DEFAULT 0,
    total_ms          double precision NOT NULL DEFAULT 0,
    -- set by the memory worker once the turn is in the chat-history collection
    vector_id         text,
    memory_indexed_at timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (conversation_id, seq)
);
CREATE INDEX chat_turns_user_idx ON chat_turns (user_id, created_at DESC);
CREATE INDEX chat_turns_unindexed_idx ON chat_turns (created_at) WHERE memory_indexed_at IS NULL;
