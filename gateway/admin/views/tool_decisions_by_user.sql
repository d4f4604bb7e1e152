-- Claude Code's tool decisions and tool runs per person over the last 90 days, from the telemetry table: the
-- tool, whether it was accepted or rejected and by what (config, user, hook), whether it succeeded, and the command.
-- user_email is the verified sender of the telemetry export (IAP), never what the client reported about itself
-- (reported_email, shown for comparison). command is filled when the client runs with OTEL_LOG_TOOL_DETAILS=1.
-- Rows are de-duplicated by telemetry_id: streaming inserts and replays are at-least-once.
WITH events AS (
  SELECT *
  FROM {telemetry_table}
  WHERE timestamp >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 90 DAY)
    AND signal = 'logs'
    AND name IN ('tool_decision', 'tool_result')
  QUALIFY ROW_NUMBER() OVER (PARTITION BY telemetry_id ORDER BY timestamp) = 1
)
SELECT
  COALESCE(event_time, timestamp) AS event_time,
  user_email,
  ARRAY_TO_STRING(groups, ', ') AS groups,
  session_id,
  name AS event,
  JSON_VALUE(attributes, '$.tool_name') AS tool_name,
  JSON_VALUE(attributes, '$.decision') AS decision,
  JSON_VALUE(attributes, '$.source') AS decided_by,
  JSON_VALUE(attributes, '$.success') AS success,
  JSON_VALUE(JSON_VALUE(attributes, '$.tool_parameters'), '$.full_command') AS command,
  JSON_VALUE(attributes, '$.tool_parameters') AS tool_parameters,
  reported_email,
  request_id
FROM events
