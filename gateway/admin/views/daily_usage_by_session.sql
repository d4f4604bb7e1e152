-- Daily requests, tokens and cost per Claude Code session (X-Claude-Code-Session-Id) over the last 30 days
-- (UTC days). Requests without a session id (other clients) are under '(none)', per user.
-- subagents: distinct X-Claude-Code-Agent-Id values seen in the session that day.
-- Rows are de-duplicated by request_id: streaming inserts and replays are at-least-once. A request's 'started'
-- row (written while it runs) is left out: its final row counts it.
WITH audit AS (
  SELECT *
  FROM {audit_table}
  WHERE timestamp >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 30 DAY)
    AND outcome != 'started'
  QUALIFY ROW_NUMBER() OVER (PARTITION BY request_id ORDER BY timestamp) = 1
)
SELECT
  DATE(timestamp) AS day,
  COALESCE(session_id, '(none)') AS session_id,
  COALESCE(user_email, '(unauthenticated)') AS user_email,
  MIN(timestamp) AS first_request_at,
  MAX(timestamp) AS last_request_at,
  COUNT(*) AS requests,
  COUNT(DISTINCT agent_id) AS subagents,
  STRING_AGG(DISTINCT COALESCE(served_model, requested_model), ', ') AS models,
  COUNTIF(outcome IN ('denied', 'unauthenticated', 'rate_limited')) AS refused,
  COUNTIF(outcome != 'ok') AS failed,
  COALESCE(SUM(input_tokens), 0) AS input_tokens,
  COALESCE(SUM(output_tokens), 0) AS output_tokens,
  COALESCE(SUM(cache_creation_input_tokens), 0) AS cache_creation_input_tokens,
  COALESCE(SUM(cache_read_input_tokens), 0) AS cache_read_input_tokens,
  ROUND(COALESCE(SUM(cost_usd), 0), 6) AS cost_usd
FROM audit
GROUP BY 1, 2, 3
