"""Reports for admins and finance: `claude-gateway audit report` (HTML with charts, and a CSV)."""
