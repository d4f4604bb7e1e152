-- One row per request and Workspace group over the last 90 days, groups flattened: the data source for Looker
-- Studio (or any tool that cannot unnest a repeated column). A request whose user matched two groups has two rows,
-- one per group; counts_once is TRUE on exactly one row of each request: filter on it (or use it as a weight)
-- for totals across groups, and leave it out for figures per group. Requests with no matched group are under
-- '(no group)'. tokens = input + output + cache creation + cache read, as in the other views.
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
  audit.request_id,
  audit.timestamp,
  DATE(audit.timestamp) AS day,
  COALESCE(audit.user_email, '(unauthenticated)') AS user_email,
  audit.user_domain,
  COALESCE(group_email, '(no group)') AS group_email,
  COALESCE(group_offset, 0) = 0 AS counts_once,
  audit.session_id,
  COALESCE(audit.served_model, audit.requested_model, '(none)') AS model,
  audit.upstream,
  audit.outcome,
  audit.outcome IN ('denied', 'unauthenticated', 'rate_limited') AS refused,
  audit.outcome != 'ok' AS failed,
  audit.status_code,
  audit.policy_rule,
  COALESCE(audit.input_tokens, 0) AS input_tokens,
  COALESCE(audit.output_tokens, 0) AS output_tokens,
  COALESCE(audit.cache_creation_input_tokens, 0) AS cache_creation_input_tokens,
  COALESCE(audit.cache_read_input_tokens, 0) AS cache_read_input_tokens,
  COALESCE(audit.input_tokens, 0) + COALESCE(audit.output_tokens, 0)
    + COALESCE(audit.cache_creation_input_tokens, 0) + COALESCE(audit.cache_read_input_tokens, 0) AS tokens,
  COALESCE(audit.cost_usd, 0) AS cost_usd,
  audit.price_source,
  audit.duration_ms,
  audit.ttfb_ms
FROM audit
LEFT JOIN UNNEST(audit.`groups`) AS group_email WITH OFFSET AS group_offset
