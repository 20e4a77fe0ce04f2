-- legacy-version: 3
-- How often the sweeper re-enqueued a chat turn's memory indexing: a turn that keeps failing
-- (e.g. a permanent embedding error) is given up after a few sweeps instead of forever.
ALTER TABLE chat_turns ADD COLUMN memory_sweeps integer NOT NULL DEFAULT 0;
