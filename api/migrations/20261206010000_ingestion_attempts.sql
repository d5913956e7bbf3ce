-- Every claim of an ingestion job counts as an attempt, and a job that has used its
-- attempts is failed rather than claimed again, even when its last worker died with
-- the job still `running` (an expired lease). Before this, an expired lease was
-- reclaimed whatever the count: a document that killed its worker (or the whole
-- API) was picked up again after every restart, forever.
DROP FUNCTION claim_ingestion_job(integer);

CREATE FUNCTION claim_ingestion_job(lease_seconds integer, max_attempts integer)
    RETURNS TABLE (job_id uuid, tenant_id uuid, document_id uuid, attempts integer)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public
    AS $$
    BEGIN
        -- Jobs that would be claimed but have no attempt left fail for good, and so
        -- do their documents, with a reason a user can act on.
        WITH exhausted AS (
            UPDATE ingestion_jobs j
            SET state = 'failed', leased_until = NULL, updated_at = now(),
                last_error = format(
                    'ingestion was attempted %s times and never finished (its worker stopped each time); the document is not retried',
                    j.attempts)
            WHERE j.id IN (
                SELECT i.id FROM ingestion_jobs i
                WHERE ((i.state = 'queued' AND i.run_after <= now())
                       OR (i.state = 'running' AND i.leased_until < now()))
                  AND i.attempts >= max_attempts
                FOR UPDATE SKIP LOCKED)
            RETURNING j.document_id, j.last_error
        )
        UPDATE documents d
        SET status = 'failed', error = exhausted.last_error, updated_at = now()
        FROM exhausted WHERE d.id = exhausted.document_id;

        RETURN QUERY
        UPDATE ingestion_jobs j
        SET state = 'running', attempts = j.attempts + 1,
            leased_until = now() + make_interval(secs => lease_seconds), updated_at = now()
        WHERE j.id = (
            SELECT i.id FROM ingestion_jobs i
            WHERE ((i.state = 'queued' AND i.run_after <= now())
                   OR (i.state = 'running' AND i.leased_until < now()))
              AND i.attempts < max_attempts
            ORDER BY i.run_after
            FOR UPDATE SKIP LOCKED
            LIMIT 1)
        RETURNING j.id, j.tenant_id, j.document_id, j.attempts;
    END
    $$;

REVOKE ALL ON FUNCTION claim_ingestion_job(integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION claim_ingestion_job(integer, integer) TO iafactory_app;
