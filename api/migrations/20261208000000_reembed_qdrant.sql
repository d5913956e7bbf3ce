-- Re-embedding a Qdrant knowledge base: the pending model's vectors go into the
-- knowledge base's next Qdrant collection, and a row of chunk_embeddings_next only
-- marks its chunk done, without a vector (see api/src/rag/reembed.rs). pgvector's rows
-- still hold theirs.
ALTER TABLE chunk_embeddings_next ALTER COLUMN embedding DROP NOT NULL;
