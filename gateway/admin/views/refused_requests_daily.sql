-- Requests the gateway refused, per user, outcome and day over the last 90 days (UTC days):
-- unauthenticated (no or bad IAP assertion, or a domain not allowed), denied (policy), rate_limited (policy).
-- user_email is '(unauthenticated)' when no verified identity came with the request.
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
  COALESCE(user_email, '(unauthenticated)') AS user_email,
  outcome,
  COUNT(*) AS requests,
  COUNT(DISTINCT client_ip) AS client_ips,
  MIN(timestamp) AS first_at,
  MAX(timestamp) AS last_at,
  STRING_AGG(DISTINCT policy_rule, ', ') AS policy_rules,
  ANY_VALUE(error_message) AS example_error
FROM audit
WHERE outcome IN ('denied', 'unauthenticated', 'rate_limited')
GROUP BY 1, 2, 3
