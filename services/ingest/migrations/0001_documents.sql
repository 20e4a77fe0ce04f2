-- legacy-version: 1
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
