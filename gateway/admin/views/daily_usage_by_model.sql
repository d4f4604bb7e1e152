-- Daily requests, users, tokens and cost per model over the last 90 days (UTC days).
-- model: the model the upstream served, else the one requested, else '(none)' (e.g. refused before parsing).
-- Rows are de-duplicated by request_id: streaming inserts and replays are at-least-once. A request's 'started'
-- row (written while it runs) is left out: its final row counts it.
WITH audit AS (
  SELECT *
  FROM {audit_table}
  WHERE timestamp >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 90 DAY)
    AND outcome != 'started'
  QUALIFY ROW_NUMBER() OVER (PARTITION BY request_id ORDER BY timestamp) = 1
)
SELECT
  DATE(timestamp) AS day,
  COALESCE(served_model, requested_model, '(none)') AS model,
  COUNT(*) AS requests,
  COUNT(DISTINCT user_email) AS users,
  COUNTIF(outcome IN ('denied', 'unauthenticated', 'rate_limited')) AS refused,
  COUNTIF(outcome != 'ok') AS failed,
  COALESCE(SUM(input_tokens), 0) AS input_tokens,
  COALESCE(SUM(output_tokens), 0) AS output_tokens,
  COALESCE(SUM(cache_creation_input_tokens), 0) AS cache_creation_input_tokens,
  COALESCE(SUM(cache_read_input_tokens), 0) AS cache_read_input_tokens,
  ROUND(COALESCE(SUM(cost_usd), 0), 6) AS cost_usd
FROM audit
GROUP BY 1, 2
