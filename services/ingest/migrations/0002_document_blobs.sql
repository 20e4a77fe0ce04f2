-- legacy-version: 1
-- The uploaded bytes, apart from the metadata so that listing never reads them.
CREATE TABLE document_blobs (
    document_id uuid PRIMARY KEY REFERENCES documents (id) ON DELETE CASCADE,
    content     bytea NOT NULL
);
