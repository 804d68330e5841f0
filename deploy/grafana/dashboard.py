#!/usr/bin/env python3
"""Writes deploy/grafana/taskwire.json, the Taskwire Grafana dashboard.

The dashboard is generated so that every panel follows the same conventions (the
`$job`/`$instance` filters, `$__rate_interval`, units) and so that a reviewer reads the
PromQL here rather than in a 2,000-line JSON file. `--check` fails when the committed JSON
differs from what this script writes (CI runs it).

Every metric used must be exported by the server: deploy/check-metrics.py verifies that
against a running binary. Database-wide numbers that each process samples on its own
(`taskwire_tasks`, `taskwire_outbox_backlog`) are aggregated with `max`, never `sum`.
"""

import json
import sys
from pathlib import Path

OUT = Path(__file__).with_name("taskwire.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", instance=~"$instance"'
RATE = "$__rate_interval"


def sel(extra=""):
    return "{" + SEL + (", " + extra if extra else "") + "}"


# Selectors with label matchers of their own (f-strings cannot hold them before 3.12).
NOT_OK = sel('code!="OK"')
SERVER_ERROR = sel('code=~"INTERNAL|UNAVAILABLE"')
CREATED = sel('type="mutation", operation=~"$create_operations", code="OK"')
DEAD = sel('status="DEAD"')


def target(expr, legend, ref):
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


def timeseries(title, description, targets, unit="short", stack=False, minimum=None):
    defaults = {
        "unit": unit,
        "custom": {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        },
    }
    if minimum is not None:
        defaults["min"] = minimum
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [target(e, l, chr(ord("A") + i)) for i, (e, l) in enumerate(targets)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def breaker_timeline():
    return {
        "type": "state-timeline",
        "title": "Redis circuit breaker",
        "description": "taskwire_redis_breaker_open per instance: while open, nothing waits on Redis "
        "(reads go to the database, rate limits are per process). See RUNBOOK TaskwireRedisBreakerOpen.",
        "datasource": DS,
        "targets": [target(f"max by (instance) (taskwire_redis_breaker_open{sel()})", "{{instance}}", "A")],
        "fieldConfig": {
            "defaults": {
                "mappings": [
                    {
                        "type": "value",
                        "options": {
                            "0": {"text": "closed", "color": "green", "index": 0},
                            "1": {"text": "open", "color": "red", "index": 1},
                        },
                    }
                ],
                "color": {"mode": "thresholds"},
                "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}]},
            },
            "overrides": [],
        },
        "options": {"showValue": "auto", "mergeValues": True, "rowHeight": 0.9, "legend": {"showLegend": False}},
    }


def quantiles(metric, by, extra="", qs=(0.5, 0.99)):
    """p50/p99 targets of a histogram, grouped by `by` (may be empty)."""
    group = ", ".join([*by, "le"])
    legend_by = " ".join("{{" + b + "}}" for b in by)
    return [
        (
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{sel(extra)}[{RATE}])))",
            f"p{int(q * 100)} {legend_by}".strip(),
        )
        for q in qs
    ]


ROWS = [
    (
        "Traffic (GraphQL)",
        [
            timeseries(
                "Operations per second by operation",
                "taskwire_graphql_operations_total. Operation names are client-chosen; names of unauthenticated "
                "or invalid operations count as '-', names past the first 200 as 'other'.",
                [(f"sum by (operation, type) (rate(taskwire_graphql_operations_total{sel()}[{RATE}]))", "{{operation}} ({{type}})")],
                unit="reqps",
                stack=True,
            ),
            timeseries(
                "Errors per second by operation and code",
                "Operations whose first error carried this extensions.code. INTERNAL and UNAVAILABLE are the "
                "server's (alert TaskwireServerErrors); the others are the client's.",
                [
                    (
                        f"sum by (operation, code) (rate(taskwire_graphql_operations_total{NOT_OK}[{RATE}]))",
                        "{{operation}} {{code}}",
                    )
                ],
                unit="reqps",
                stack=True,
            ),
            timeseries(
                "Error ratio",
                "Share of operations answering an error: all codes, and server-side codes only.",
                [
                    (
                        f"sum(rate(taskwire_graphql_operations_total{NOT_OK}[{RATE}])) / "
                        f"sum(rate(taskwire_graphql_operations_total{sel()}[{RATE}]))",
                        "any error",
                    ),
                    (
                        f"sum(rate(taskwire_graphql_operations_total{SERVER_ERROR}[{RATE}])) / "
                        f"sum(rate(taskwire_graphql_operations_total{sel()}[{RATE}]))",
                        "INTERNAL or UNAVAILABLE",
                    ),
                ],
                unit="percentunit",
                minimum=0,
            ),
            timeseries(
                "Latency by operation (p50, p99)",
                "taskwire_graphql_operation_duration_seconds: time to execute one operation in the server "
                "(parsing and limits excluded).",
                quantiles("taskwire_graphql_operation_duration_seconds", ["operation"]),
                unit="s",
            ),
            timeseries(
                "Refused by the protections",
                "taskwire_rate_limited_total by bucket (HTTP 429) and taskwire_query_limit_rejections_total by code.",
                [
                    (f"sum by (bucket) (rate(taskwire_rate_limited_total{sel()}[{RATE}]))", "rate limited: {{bucket}}"),
                    (f"sum by (code) (rate(taskwire_query_limit_rejections_total{sel()}[{RATE}]))", "query limit: {{code}}"),
                ],
                unit="reqps",
            ),
        ],
    ),
    (
        "Tasks and dispatch",
        [
            timeseries(
                "Create latency (p50, p99)",
                "Duration of the mutations whose operation name matches $create_operations (the names clients give "
                "createTask/createTasks operations; the frontends use CreateTask and CreateTasks). Taskwire has no "
                "per-field metric, so creates sent under other names are not in this panel.",
                quantiles("taskwire_graphql_operation_duration_seconds", ["operation"], 'type="mutation", operation=~"$create_operations"'),
                unit="s",
            ),
            timeseries(
                "Creates per second",
                "Successful operations matching $create_operations (createTasks creates up to 500 tasks per operation).",
                [
                    (
                        f"sum by (operation) (rate(taskwire_graphql_operations_total{CREATED}[{RATE}]))",
                        "{{operation}}",
                    )
                ],
                unit="reqps",
            ),
            timeseries(
                "Dispatch latency, QUEUED to offer (p50, p90, p99)",
                "taskwire_dispatch_latency_seconds over every dispatcher. Target p99 <= 50 ms "
                "(alert TaskwireDispatchLatencyHigh). Tasks waiting for a free worker count too.",
                quantiles("taskwire_dispatch_latency_seconds", [], qs=(0.5, 0.9, 0.99)),
                unit="s",
            ),
            timeseries(
                "Offers per second and tasks ready in the matchers",
                "taskwire_dispatch_offers_total; taskwire_dispatch_ready is what each matcher holds ready to offer.",
                [
                    (f"sum by (instance) (rate(taskwire_dispatch_offers_total{sel()}[{RATE}]))", "offers/s {{instance}}"),
                    (f"sum by (instance) (taskwire_dispatch_ready{sel()})", "ready {{instance}}"),
                ],
            ),
            timeseries(
                "Unfinished and dead tasks by status",
                "taskwire_tasks, sampled from the database every 15 s by each dispatcher (every replica reports "
                "the same numbers, hence max). SUCCEEDED and CANCELLED are not counted: see the next panel.",
                [(f"max by (status) (taskwire_tasks{sel()})", "{{status}}")],
            ),
            timeseries(
                "Tasks entering each status per second",
                "taskwire_task_transitions_total: every process counts the changes it committed, hence sum. "
                "SUCCEEDED is the throughput; DEAD the dead-letter rate (alert TaskwireDeadLettersGrowing).",
                [(f"sum by (status) (rate(taskwire_task_transitions_total{sel()}[{RATE}]))", "{{status}}")],
            ),
            timeseries(
                "Dead letters per minute",
                "Tasks that became DEAD (taskwire_task_transitions_total{status=\"DEAD\"}), summed over the "
                "replicas. Alert TaskwireDeadLettersGrowing.",
                [(f"sum(rate(taskwire_task_transitions_total{DEAD}[15m])) * 60", "DEAD per minute")],
            ),
            timeseries(
                "Reaped and promoted per second",
                "taskwire_reaped_total by reason: promoted (scheduled, now due), offer_expired, lease_expired, "
                "deadline, worker_offline; and taskwire_workers_expired_total.",
                [
                    (f"sum by (reason) (rate(taskwire_reaped_total{sel()}[{RATE}]))", "{{reason}}"),
                    (f"sum(rate(taskwire_workers_expired_total{sel()}[{RATE}]))", "workers expired"),
                ],
            ),
        ],
    ),
    (
        "Outbox and Kafka",
        [
            timeseries(
                "Outbox backlog",
                "Rows committed but not yet published to Kafka (exact up to 10,000, an upper bound above). "
                "Alert TaskwireOutboxBacklogHigh.",
                [(f"max(taskwire_outbox_backlog{sel()})", "backlog")],
            ),
            timeseries(
                "Outbox publish latency, commit to broker ack (p50, p99)",
                "taskwire_outbox_publish_latency_seconds: the time a committed change takes to reach Kafka.",
                quantiles("taskwire_outbox_publish_latency_seconds", []),
                unit="s",
            ),
            timeseries(
                "Outbox published and failed per second",
                "taskwire_outbox_published_total, taskwire_outbox_publish_failures_total (retried later) and "
                "taskwire_outbox_producer_restarts_total.",
                [
                    (f"sum(rate(taskwire_outbox_published_total{sel()}[{RATE}]))", "published"),
                    (f"sum(rate(taskwire_outbox_publish_failures_total{sel()}[{RATE}]))", "failed"),
                    (f"sum(rate(taskwire_outbox_producer_restarts_total{sel()}[{RATE}]))", "producer restarts"),
                ],
                unit="ops",
            ),
            timeseries(
                "Consumer lag",
                "taskwire_kafka_consumer_lag by instance and consumer (status: live updates; dispatch: the "
                "dispatcher group). Alert TaskwireConsumerLagHigh.",
                [(f"max by (instance, consumer) (taskwire_kafka_consumer_lag{sel()})", "{{consumer}} {{instance}}")],
            ),
        ],
    ),
    (
        "Cache and Redis",
        [
            timeseries(
                "Task cache hit rate by level",
                "taskwire_cache_hits_total / (hits + misses), for L1 (in process) and L2 (Redis).",
                [
                    (
                        f"sum by (level) (rate(taskwire_cache_hits_total{sel()}[{RATE}])) / "
                        f"(sum by (level) (rate(taskwire_cache_hits_total{sel()}[{RATE}])) + "
                        f"sum by (level) (rate(taskwire_cache_misses_total{sel()}[{RATE}])))",
                        "{{level}}",
                    )
                ],
                unit="percentunit",
                minimum=0,
            ),
            timeseries(
                "Cache loads from the database and Redis errors",
                "taskwire_cache_db_loads_total (single-flight batch loads that reached the database) and "
                "taskwire_redis_errors_total (failed or timed-out commands).",
                [
                    (f"sum by (instance) (rate(taskwire_cache_db_loads_total{sel()}[{RATE}]))", "db loads {{instance}}"),
                    (f"sum by (instance) (rate(taskwire_redis_errors_total{sel()}[{RATE}]))", "redis errors {{instance}}"),
                ],
                unit="ops",
            ),
            breaker_timeline(),
        ],
    ),
    (
        "WebSocket and live updates",
        [
            timeseries(
                "WebSocket connections and subscriptions",
                "taskwire_ws_connections and taskwire_subscriptions per instance.",
                [
                    (f"sum by (instance) (taskwire_ws_connections{sel()})", "connections {{instance}}"),
                    (f"sum by (instance) (taskwire_subscriptions{sel()})", "subscriptions {{instance}}"),
                ],
            ),
            timeseries(
                "Subscribers falling behind",
                "Buffer overflows (the subscriber resyncs from the database), resyncs, and subscriptions ended "
                "for not keeping up at all.",
                [
                    (f"sum(rate(taskwire_subscriber_overflows_total{sel()}[{RATE}]))", "overflows"),
                    (f"sum(rate(taskwire_subscriber_resyncs_total{sel()}[{RATE}]))", "resyncs"),
                    (f"sum(rate(taskwire_subscribers_too_slow_total{sel()}[{RATE}]))", "too slow"),
                    (f"sum(rate(taskwire_ws_slow_clients_dropped_total{sel()}[{RATE}]))", "clients dropped"),
                ],
                unit="ops",
            ),
            timeseries(
                "Status events consumed",
                "taskwire_status_events_total by outcome (routed, invalid).",
                [(f"sum by (outcome) (rate(taskwire_status_events_total{sel()}[{RATE}]))", "{{outcome}}")],
                unit="ops",
            ),
        ],
    ),
    (
        "Database",
        [
            timeseries(
                "Database pool connections",
                "taskwire_db_pool_connections by instance and state, sampled at each scrape. The pool opens "
                "connections on demand up to TASKWIRE_DATABASE_MAX_CONNECTIONS. Alert TaskwireDbPoolSaturated.",
                [(f"sum by (instance, state) (taskwire_db_pool_connections{sel()})", "{{state}} {{instance}}")],
                stack=True,
            ),
            timeseries(
                "SQLite writer busy (embedded)",
                "Share of time SQLite's one writer is held, summed over writers "
                "(taskwire_sqlite_write_gate_held_seconds_total); empty on MySQL/MariaDB.",
                [
                    (
                        f"sum by (instance) (rate(taskwire_sqlite_write_gate_held_seconds_total{sel()}[{RATE}]))",
                        "{{instance}}",
                    )
                ],
                unit="percentunit",
                minimum=0,
            ),
            timeseries(
                "Write transactions per second by writer",
                "taskwire_db_writes_total by writer (create, transition, together, offer, relay, sweep, worker, admin), "
                "on both backends, and MySQL lock conflicts (taskwire_db_lock_conflicts_total) by outcome. "
                "Divided by creates per second this is what a task costs the database: batches grow with "
                "load, so transactions per task fall as the rate rises (docs/BENCHMARKS.md).",
                [
                    (f"sum by (writer) (rate(taskwire_db_writes_total{sel()}[{RATE}]))", "{{writer}}"),
                    (
                        f"sum by (outcome) (rate(taskwire_db_lock_conflicts_total{sel()}[{RATE}]))",
                        "lock conflicts {{outcome}}",
                    ),
                ],
                unit="ops",
                stack=False,
            ),
        ],
    ),
]


def variables():
    def query_var(name, label, query):
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DS,
            "query": {"query": query, "refId": name},
            "definition": query,
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
        }

    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "refresh": 1,
        },
        query_var("job", "Job", "label_values(taskwire_ws_connections, job)"),
        query_var("instance", "Instance", 'label_values(taskwire_ws_connections{job=~"$job"}, instance)'),
        {
            "name": "create_operations",
            "label": "Create operation names (regex)",
            "type": "textbox",
            "query": "CreateTask|CreateTasks",
            "current": {"text": "CreateTask|CreateTasks", "value": "CreateTask|CreateTasks"},
        },
    ]


def dashboard():
    panels, y, next_id = [], 0, 1
    for title, row in ROWS:
        panels.append({"type": "row", "title": title, "collapsed": False, "id": next_id, "panels": [],
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        next_id, y = next_id + 1, y + 1
        per_line = 3 if len(row) % 3 == 0 or len(row) > 4 else 2
        width = 24 // per_line
        for i, panel in enumerate(row):
            panel = dict(panel, id=next_id)
            panel["gridPos"] = {"h": 8, "w": width, "x": (i % per_line) * width, "y": y + (i // per_line) * 8}
            panels.append(panel)
            next_id += 1
        y += ((len(row) + per_line - 1) // per_line) * 8
    return {
        "uid": "taskwire",
        "title": "Taskwire",
        "description": "Taskwire's /metrics: traffic, tasks and dispatch, outbox and Kafka, cache, WebSocket, database. "
        "Alerts and their runbook: deploy/prometheus/alerts.yml, deploy/RUNBOOK.md.",
        "tags": ["taskwire"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": variables()},
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }


def render():
    return json.dumps(dashboard(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    text = render()
    if sys.argv[1:] == ["--check"]:
        if not OUT.exists() or OUT.read_text() != text:
            sys.exit(f"{OUT} is not what {Path(__file__).name} writes: run python3 {__file__}")
        print(f"{OUT.name} is up to date")
    elif sys.argv[1:]:
        sys.exit("usage: dashboard.py [--check]")
    else:
        OUT.write_text(text)
        print(f"wrote {OUT}")
