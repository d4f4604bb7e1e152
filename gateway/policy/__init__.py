"""Access policy: who may use which model, how fast and how much. The proxy asks before and after."""
