-- An API key may be limited to some collections (ids of the ingest service's collections; NULL: every
-- collection its user belongs to). Membership is checked by the ingest service at each use.
ALTER TABLE api_keys ADD COLUMN collection_ids uuid[];
