-- Accounts (issued by the gateway). Services key everything by the token's user id (text),
-- so a gRPC-only caller with a minted token works without an account row.
CREATE TABLE users (
    id            uuid PRIMARY KEY,
    email         text NOT NULL,
    username      text NOT NULL,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

-- Tokens ended by logout before their expiry.
CREATE TABLE revoked_tokens (
    token_id   text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);

CREATE TABLE documents (
    id             uuid PRIMARY KEY,
    user_id        text NOT NULL,
    filename       text NOT NULL,
    mime_type      text NOT NULL,
    file_size      bigint NOT NULL CHECK (file_size > 0),
    sha256         text NOT NULL,
    status         text NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
    stage          text NOT NULL DEFAULT 'queued',
    error          text,
    pages_done     integer NOT NULL DEFAULT 0,
    pages_total    integer NOT NULL DEFAULT 0,
    chunks_done    integer NOT NULL DEFAULT 0,
    chunks_total   integer NOT NULL DEFAULT 0,
    page_count     integer NOT NULL DEFAULT 0,
    chunk_count    integer NOT NULL DEFAULT 0,
    attempts       integer NOT NULL DEFAULT 0,
    task_id        text,
    -- a worker owns a 'processing' document until lease_until; the sweeper recovers it after
    lease_until    timestamptz,
    enqueued_at    timestamptz,
    webhook_url    text,
    webhook_sent_at timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    indexed_at     timestamptz
);
CREATE UNIQUE INDEX documents_user_sha256_key ON documents (user_id, sha256);
CREATE INDEX documents_user_created_idx ON documents (user_id, created_at DESC, id DESC);
CREATE INDEX documents_unfinished_idx ON documents (status, lease_until)
    WHERE status IN ('pending', 'processing');

-- The uploaded bytes, apart from the metadata so that listing never reads them.
CREATE TABLE document_blobs (
    document_id uuid PRIMARY KEY REFERENCES documents (id) ON DELETE CASCADE,
    content     bytea NOT NULL
);

-- Every change of a document is announced on 'document_events' (payload: the id), so
-- WatchDocument streams progress without polling.
CREATE FUNCTION notify_document_event() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('document_events', NEW.id::text);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER documents_notify
    AFTER INSERT OR UPDATE ON documents
    FOR EACH ROW EXECUTE FUNCTION notify_document_event();

CREATE TABLE conversations (
    id         uuid PRIMARY KEY,
    user_id    text NOT NULL,
    title      text NOT NULL,
    turn_count integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversations_user_updated_idx ON conversations (user_id, updated_at DESC, id DESC);

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
