-- Workflows, part 2: the engine's records. Each agent of an execution has a step row;
-- every transition is appended to an ordered event log (what SSE and WebSocket clients
-- replay, from any replica); each cron tick is claimed by one row, so one execution
-- fires per tick however many replicas run.

ALTER TABLE workflow_executions
    ADD COLUMN deadline_at timestamptz,
    ADD COLUMN prompt_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN completion_tokens bigint NOT NULL DEFAULT 0;
CREATE INDEX workflow_executions_open_idx ON workflow_executions (deadline_at)
    WHERE status IN ('pending', 'running');

CREATE TABLE workflow_steps (
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    execution_id      uuid NOT NULL REFERENCES workflow_executions (id) ON DELETE CASCADE,
    agent             text NOT NULL,
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'skipped', 'cancelled')),
    -- The prompt as sent, after templating and retrieval.
    input             text,
    output            text,
    error             text,
    attempts          integer NOT NULL DEFAULT 0,
    prompt_tokens     bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    citations         jsonb NOT NULL DEFAULT '[]',
    started_at        timestamptz,
    finished_at       timestamptz,
    duration_ms       bigint,
    PRIMARY KEY (execution_id, agent)
);

CREATE TABLE workflow_events (
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    execution_id uuid NOT NULL REFERENCES workflow_executions (id) ON DELETE CASCADE,
    seq          integer NOT NULL,
    type         text NOT NULL,
    agent        text,
    data         jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (execution_id, seq)
);

CREATE TABLE workflow_schedule_fires (
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    workflow_id  uuid NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    fire_at      timestamptz NOT NULL,
    execution_id uuid REFERENCES workflow_executions (id) ON DELETE SET NULL,
    PRIMARY KEY (workflow_id, fire_at)
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['workflow_steps', 'workflow_events', 'workflow_schedule_fires']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id())',
            t);
    END LOOP;
END
$$;

-- The scheduler looks across tenants before it knows which one is due: it sees only
-- what scheduling needs.
CREATE FUNCTION scheduled_workflows()
    RETURNS TABLE (tenant_id uuid, workflow_id uuid, schedule text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public
    AS $$
        SELECT w.tenant_id, w.id, w.definition -> 'trigger' ->> 'schedule'
        FROM workflows w JOIN tenants t ON t.id = w.tenant_id
        WHERE t.status = 'active' AND w.definition -> 'trigger' ->> 'schedule' IS NOT NULL
    $$;

-- Executions whose replica stopped before finishing them: failed once well past their
-- deadline, with a message that says so.
CREATE FUNCTION expire_workflow_executions(grace_seconds integer) RETURNS integer
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public
    AS $$
        WITH expired AS (
            UPDATE workflow_executions
            SET status = 'failed', finished_at = now(),
                error = 'the execution was abandoned: the API replica running it stopped before its deadline'
            WHERE status IN ('pending', 'running')
              AND deadline_at < now() - make_interval(secs => grace_seconds)
            RETURNING id)
        SELECT count(*)::integer FROM expired
    $$;

REVOKE ALL ON FUNCTION scheduled_workflows(), expire_workflow_executions(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION scheduled_workflows(), expire_workflow_executions(integer) TO iafactory_app;
