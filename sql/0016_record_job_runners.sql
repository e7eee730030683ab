-- Who runs each job, and when it last showed it was alive (atrium/jobs.py): a job
-- left queued/running by a runner that is gone is found and settled, by exactly
-- one node, while a job a live runner holds is never taken.
ALTER TABLE jobs
    ADD COLUMN runner_node  TEXT,         -- the Orthanc+Atrium node (stable across its restarts)
    ADD COLUMN runner       TEXT,         -- one start of one process on that node
    ADD COLUMN heartbeat_at TIMESTAMPTZ;  -- stamped every few seconds while it runs

-- The orphan search and the heartbeat look at live jobs only: a handful of rows.
CREATE INDEX idx_jobs_live_runner ON jobs (runner_node, runner, heartbeat_at)
    WHERE status IN ('queued', 'running');
