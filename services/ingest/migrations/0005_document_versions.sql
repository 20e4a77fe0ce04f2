-- Documents replaced in place (IngestService.ReplaceDocument): every version of a document's file with
-- its bytes and what became of it. `documents` keeps describing the active (searchable) version
-- (`version`); `pending_version` names the version being processed, if any, whose processing the
-- status, stage, progress and lease columns then describe.
ALTER TABLE documents ADD COLUMN version integer NOT NULL DEFAULT 1 CHECK (version > 0),
                      ADD COLUMN pending_version integer CHECK (pending_version > version);

-- status: 'pending' until the version is processed, then 'completed' (it was indexed: it is the active
-- version, or was until a later one replaced it) or 'failed' (error, error_reason say why).
CREATE TABLE document_versions (
    document_id  uuid NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    version      integer NOT NULL CHECK (version > 0),
    filename     text NOT NULL,
    mime_type    text NOT NULL,
    file_size    bigint NOT NULL CHECK (file_size > 0),
    sha256       text NOT NULL,
    status       text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'completed', 'failed')),
    error        text,
    error_reason text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    indexed_at   timestamptz,
    PRIMARY KEY (document_id, version)
);
-- a pending replacement's bytes count for a user's deduplication like an active version's
CREATE INDEX document_versions_sha256_idx ON document_versions (sha256);

INSERT INTO document_versions (document_id, version, filename, mime_type, file_size, sha256, status, error,
                               error_reason, created_at, indexed_at)
SELECT id, 1, filename, mime_type, file_size, sha256,
       CASE status WHEN 'completed' THEN 'completed' WHEN 'failed' THEN 'failed' ELSE 'pending' END,
       CASE WHEN status = 'failed' THEN error END, CASE WHEN status = 'failed' THEN error_reason END,
       created_at, indexed_at
FROM documents;

-- each version's bytes; the existing ones are version 1
ALTER TABLE document_blobs ADD COLUMN version integer NOT NULL DEFAULT 1;
ALTER TABLE document_blobs DROP CONSTRAINT document_blobs_pkey;
ALTER TABLE document_blobs ADD PRIMARY KEY (document_id, version);
