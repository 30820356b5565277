"""Monitoring and decisions: live performance from the prediction store, and statistically valid
promote / keep testing / rollback decisions that act on the registry and the running service."""
