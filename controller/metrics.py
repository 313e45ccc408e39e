"""Prometheus metrics cadml exports (names are checked by the dashboard/alert tests later).

Only the adapters record into these (reconcile step, operator, workers); the
pure planner and validators know nothing of them.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("cadml_reconciles_total", "Reconcile passes per tenant", ["mode"])
RECONCILE_ERRORS = Counter("cadml_reconcile_errors_total", "Reconcile passes that failed",
                           ["mode", "reason"])
RECONCILE_SECONDS = Histogram("cadml_reconcile_duration_seconds", "Duration of one tenant pass",
                              ["mode"])
INVALID_OBJECTS = Gauge("cadml_invalid_objects", "Objects with a Stalled/InvalidSpec status",
                        ["tenant"])
POLICY_VERSION = Gauge("cadml_policy_version", "Current policyVersion per model",
                       ["tenant", "model"])
AUDIT_EVENTS = Counter("cadml_audit_events_total", "Audit events appended", ["tenant", "action"])
