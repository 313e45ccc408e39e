"""Prometheus metrics cadml exports (names are checked by the dashboard/alert tests later).

Only the adapters record into these (reconcile step, operator, workers); the
pure planner and validators know nothing of them.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("cadml_reconciles_total", "Reconcile passes per tenant", ["mode"])
OPERATOR_PASSES = Counter("cadml_operator_tenant_passes_total", "Operator passes per tenant, "
                          "by what asked for them (event, repair)", ["tenant", "trigger"])
OPERATOR_TIMER_RUNS = Counter("cadml_operator_timer_runs_total", "Periodic runs of the operator "
                              "(drift repair, canary analysis) per tenant", ["tenant", "timer"])
OPERATOR_PERIODIC_OVERRUNS = Counter(
    "cadml_operator_periodic_overruns_total", "Periodic runs of a tenant still going after "
    "the repair interval (a store or API call that hangs); the tenant is not run again "
    "until that run ends", ["tenant"])
RECONCILE_ERRORS = Counter("cadml_reconcile_errors_total", "Reconcile passes that failed",
                           ["mode", "reason"])
RECONCILE_SECONDS = Histogram("cadml_reconcile_duration_seconds", "Duration of one tenant pass",
                              ["mode"])
INVALID_OBJECTS = Gauge("cadml_invalid_objects", "Objects with a Stalled/InvalidSpec status",
                        ["tenant"])
POLICY_VERSION = Gauge("cadml_policy_version", "Current policyVersion per model",
                       ["tenant", "model"])
AUDIT_EVENTS = Counter("cadml_audit_events_total", "Audit events appended", ["tenant", "action"])

WORKER_REQUESTS = Counter("cadml_worker_requests_total", "Runs served, by version and route",
                          ["tenant", "model", "version", "route"])
RUN_LATENCY = Histogram("cadml_run_latency_seconds", "Search latency per run",
                        ["tenant", "model", "version"])
WORKER_DEGRADED = Gauge("cadml_worker_degraded", "1 while a version is served by the exact "
                        "fallback", ["tenant", "model", "version"])
WORKER_POLICY_VERSION = Gauge("cadml_worker_policy_version", "policyVersion a worker applies",
                              ["tenant", "model"])
WORKER_NOTIFICATIONS = Counter("cadml_worker_policy_notifications_total",
                               "Policy-change notifications a worker received from the store "
                               "(PostgreSQL LISTEN/NOTIFY; also one per (re)connect)",
                               ["tenant", "model"])
WORKER_LOAD_FAILURES = Counter("cadml_worker_version_load_failures",
                               "Attempts to load a version that failed, by exception type",
                               ["tenant", "model", "version", "error"])
ARTIFACT_REFUSALS = Counter("cadml_artifact_refusals_total", "Artifacts refused as unsafe",
                            ["tenant", "model", "code"])
WORKER_ERRORS = Counter("cadml_worker_errors_total", "Requests refused, by error code",
                        ["tenant", "model", "code"])
WORKER_UPLOADS = Gauge("cadml_worker_uploads_in_flight", "Drawing uploads being read or "
                       "parsed now (beyond --max-concurrent-uploads: 429)", ["tenant", "model"])
SHADOW_REQUESTS = Counter("cadml_worker_shadow_requests_total", "Requests mirrored to the "
                          "shadow version, by outcome (recorded, failed, dropped: the queue "
                          "was full, skipped: the shadow was withdrawn meanwhile)",
                          ["tenant", "model", "version", "outcome"])
CANARY_ABORTS = Counter("cadml_canary_aborts_total", "Canaries aborted by automatic analysis",
                        ["tenant", "model", "version"])
ROLLBACK_CYCLES = Gauge("cadml_rollback_cycles", "Refresh cycles the last rollback needed to "
                        "reach new runs", ["tenant", "model"])
