-- The API key a conversation was started with, when that key is limited to collections: such a key
-- reaches only the conversations it started (NULL: started by a session or an unlimited key, which
-- reach all of their user's conversations).
ALTER TABLE conversations ADD COLUMN api_key_id text;
