-- Requests that started but never ended over the last 30 days: a 'started' row (written once a request has run
-- past a flush of the audit writer) with no final row for the same request_id. These are requests cut short by a
-- crash, an out-of-memory kill or a host failure: the user, model and session are known, the tokens are not.
-- A request that started in the last minutes may simply still be running (streams can last up to the upstream
-- read timeout); `running_for_minutes` says how long ago it started.
WITH audit AS (
  SELECT request_id, timestamp, outcome, user_email, session_id, requested_model, method, path, client_ip, trace_id
  FROM {audit_table}
  WHERE timestamp >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 30 DAY)
),
started AS (
  SELECT *
  FROM audit
  WHERE outcome = 'started'
  QUALIFY ROW_NUMBER() OVER (PARTITION BY request_id ORDER BY timestamp) = 1
),
ended AS (
  SELECT DISTINCT request_id
  FROM audit
  WHERE outcome != 'started'
)
SELECT
  started.timestamp AS started_at,
  TIMESTAMP_DIFF(CURRENT_TIMESTAMP(), started.timestamp, MINUTE) AS running_for_minutes,
  started.request_id,
  started.user_email,
  started.session_id,
  started.requested_model,
  started.method,
  started.path,
  started.client_ip,
  started.trace_id
FROM started
LEFT JOIN ended USING (request_id)
WHERE ended.request_id IS NULL
