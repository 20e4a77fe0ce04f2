-- When a turn's memory vector became the embedding of its full "User: … / Assistant: …" text. A turn
-- is first made searchable with its question's embedding (the one the search that answered it
-- computed, so it costs no model run); the memory worker replaces it with the full text's when the
-- memory queue is short, and the memory sweep catches up the rest when the queue is idle. Turns
-- indexed before this migration were embedded with the full text.
ALTER TABLE chat_turns ADD COLUMN memory_refined_at timestamptz;
UPDATE chat_turns SET memory_refined_at = memory_indexed_at WHERE memory_indexed_at IS NOT NULL;
