-- legacy-version: 4
-- Uploaded files are mostly compressed already (PDF streams, DOCX zips): storing them out of line
-- without pglz saves ~25 ms of CPU per 5 MB upload on the acknowledgement path (measured with
-- `make bench`), at no cost in size.
ALTER TABLE document_blobs ALTER COLUMN content SET STORAGE EXTERNAL;
