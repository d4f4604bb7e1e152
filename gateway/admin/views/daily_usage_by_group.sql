-- Daily requests, users, tokens and cost per Workspace group over the last 90 days (UTC days).
-- A request counts once for every policy group its user matched, so the groups of a day add up to more than
-- the day's total; requests with no matched group are under '(no group)'.
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
  COALESCE(group_email, '(no group)') AS group_email,
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
LEFT JOIN UNNEST(audit.`groups`) AS group_email
GROUP BY 1, 2
