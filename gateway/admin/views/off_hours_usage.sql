-- Use outside working hours over the last 30 days, per user and local day: requests before 07:00 or from
-- 20:00 on, or on a Saturday or Sunday. Hours are in UTC; to use your office's time zone, replace 'UTC'
-- below with e.g. 'Europe/Paris' (every occurrence) and re-create the view.
-- Rows are de-duplicated by request_id: streaming inserts and replays are at-least-once. A request's 'started'
-- row (written while it runs) is left out: its final row counts it.
WITH audit AS (
  SELECT *, DATETIME(timestamp, 'UTC') AS local_time
  FROM {audit_table}
  WHERE timestamp >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 30 DAY)
    AND user_email IS NOT NULL
    AND outcome != 'started'
  QUALIFY ROW_NUMBER() OVER (PARTITION BY request_id ORDER BY timestamp) = 1
)
SELECT
  DATE(local_time) AS day,
  user_email,
  EXTRACT(DAYOFWEEK FROM local_time) IN (1, 7) AS weekend,
  COUNT(*) AS requests,
  MIN(timestamp) AS first_at,
  MAX(timestamp) AS last_at,
  COALESCE(SUM(input_tokens), 0) + COALESCE(SUM(output_tokens), 0)
    + COALESCE(SUM(cache_creation_input_tokens), 0) + COALESCE(SUM(cache_read_input_tokens), 0) AS tokens,
  ROUND(COALESCE(SUM(cost_usd), 0), 6) AS cost_usd
FROM audit
WHERE EXTRACT(DAYOFWEEK FROM local_time) IN (1, 7)
  OR EXTRACT(HOUR FROM local_time) < 7
  OR EXTRACT(HOUR FROM local_time) >= 20
GROUP BY 1, 2, 3
