-- Collections (services/ingest/collections.py): every document lives in one. Each user has a personal
-- collection, whose id is derived from the user id (md5 of 'docent-personal:' || user id, as a uuid), so
-- any part can name it without a lookup; it is created on first use, cannot be shared or deleted.
-- Other collections are shared with members as viewer (search, chat), editor (also upload, replace,
-- delete documents) or owner (also share, rename, delete the collection).
CREATE TABLE collections (
    id         uuid PRIMARY KEY,
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    personal   boolean NOT NULL DEFAULT false,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE collection_members (
    collection_id uuid NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    user_id       text NOT NULL,
    role          text NOT NULL CHECK (role IN ('viewer', 'editor', 'owner')),
    added_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection_id, user_id)
);
-- "which collections may this user read": every document access goes through it
CREATE INDEX collection_members_user_idx ON collection_members (user_id, collection_id);

-- the personal collections of everyone who has documents, and their documents in them
INSERT INTO collections (id, name, personal, created_by)
SELECT DISTINCT md5('docent-personal:' || user_id)::uuid, 'Personal', true, user_id FROM documents;
INSERT INTO collection_members (collection_id, user_id, role)
SELECT id, created_by, 'owner' FROM collections WHERE personal;

ALTER TABLE documents ADD COLUMN collection_id uuid REFERENCES collections (id);
UPDATE documents SET collection_id = md5('docent-personal:' || user_id)::uuid;
ALTER TABLE documents ALTER COLUMN collection_id SET NOT NULL;

-- the same bytes may live in several collections; within one they are one document
DROP INDEX documents_user_sha256_key;
CREATE UNIQUE INDEX documents_collection_sha256_key ON documents (collection_id, sha256);
CREATE INDEX documents_collection_created_idx ON documents (collection_id, created_at DESC, id DESC);
