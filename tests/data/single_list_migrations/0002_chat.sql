-- Chat: the earlier turns of the conversation that were in the answerer's context (explain view;
-- they count as chat history for chat_context_used). Recent turns load through the existing
-- UNIQUE (conversation_id, seq) index.
ALTER TABLE chat_turns ADD COLUMN history_turn_ids uuid[] NOT NULL DEFAULT '{}';
