-- A stable, machine-readable code beside the human `error` of a failed document (PDF_ENCRYPTED,
-- PDF_INVALID, NO_TEXT, RETRIES_EXHAUSTED, WORKER_LOST, ...); NULL unless the document failed.
-- Documents that failed before this migration keep their message and have no code.
ALTER TABLE documents ADD COLUMN error_reason text;
