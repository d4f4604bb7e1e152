-- Users ranked by estimated cost this week (since Monday 00:00 UTC); rank 1 spent the most.
-- For the top ten: WHERE spend_rank <= 10.
-- Rows are de-duplicated by request_id: streaming inserts and replays are at-least-once. A request's 'started'
-- row (written while it runs) is left out: its final row counts it.
WITH audit AS (
  SELECT *
  FROM {audit_table}
  -- DAYOFWEEK is 1 on Sunday: this is the date of this week's Monday.
  WHERE timestamp >= TIMESTAMP(DATE_SUB(CURRENT_DATE(), INTERVAL MOD(EXTRACT(DAYOFWEEK FROM CURRENT_DATE()) + 5, 7) DAY))
    AND user_email IS NOT NULL
    AND outcome != 'started'
  QUALIFY ROW_NUMBER() OVER (PARTITION BY request_id ORDER BY timestamp) = 1
),
spend AS (
  SELECT
    user_email,
    ROUND(COALESCE(SUM(cost_usd), 0), 6) AS cost_usd,
    COUNT(*) AS requests,
    COUNT(DISTINCT session_id) AS sessions,
    COALESCE(SUM(input_tokens), 0) + COALESCE(SUM(output_tokens), 0)
      + COALESCE(SUM(cache_creation_input_tokens), 0) + COALESCE(SUM(cache_read_input_tokens), 0) AS tokens,
    MAX(timestamp) AS last_request_at
  FROM audit
  GROUP BY 1
)
SELECT
  RANK() OVER (ORDER BY cost_usd DESC) AS spend_rank,
  user_email,
  cost_usd,
  requests,
  sessions,
  tokens,
  last_request_at
FROM spend
