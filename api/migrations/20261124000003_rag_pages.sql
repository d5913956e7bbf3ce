-- How many pages a paged document (PDF) has; chunks record theirs in metadata.
ALTER TABLE documents ADD COLUMN pages integer;
