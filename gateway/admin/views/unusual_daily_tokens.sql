-- Users whose tokens on a day of the last 7 (UTC days) are far above their own median: at least 3 times the
-- median of their daily totals over the 30 days before, and at least 100,000 tokens, with at least 5 earlier
-- days of use to compare with. tokens = input + output + cache creation + cache read.
-- Rows are de-duplicated by request_id: streaming inserts and replays are at-least-once. A request's 'started'
-- row (written while it runs) is left out: its final row counts it.
WITH audit AS (
  SELECT *
  FROM {audit_table}
  WHERE timestamp >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 38 DAY)
    AND user_email IS NOT NULL
    AND outcome != 'started'
  QUALIFY ROW_NUMBER() OVER (PARTITION BY request_id ORDER BY timestamp) = 1
),
daily AS (
  SELECT
    user_email,
    DATE(timestamp) AS day,
    COALESCE(SUM(input_tokens), 0) + COALESCE(SUM(output_tokens), 0)
      + COALESCE(SUM(cache_creation_input_tokens), 0) + COALESCE(SUM(cache_read_input_tokens), 0) AS tokens,
    COUNT(*) AS requests,
    ROUND(COALESCE(SUM(cost_usd), 0), 6) AS cost_usd
  FROM audit
  GROUP BY 1, 2
),
compared AS (
  SELECT
    recent.user_email,
    recent.day,
    recent.tokens,
    recent.requests,
    recent.cost_usd,
    APPROX_QUANTILES(history.tokens, 2)[OFFSET(1)] AS median_daily_tokens_30d,
    COUNT(history.day) AS history_days
  FROM daily AS recent
  JOIN daily AS history
    ON history.user_email = recent.user_email
    AND history.day BETWEEN DATE_SUB(recent.day, INTERVAL 30 DAY) AND DATE_SUB(recent.day, INTERVAL 1 DAY)
  WHERE recent.day >= DATE_SUB(CURRENT_DATE(), INTERVAL 6 DAY)
  GROUP BY 1, 2, 3, 4, 5
)
SELECT
  day,
  user_email,
  tokens,
  median_daily_tokens_30d,
  ROUND(SAFE_DIVIDE(tokens, median_daily_tokens_30d), 1) AS times_median,
  history_days,
  requests,
  cost_usd
FROM compared
WHERE history_days >= 5
  AND tokens >= 100000
  AND tokens >= 3 * median_daily_tokens_30d
