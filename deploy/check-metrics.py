#!/usr/bin/env python3
"""Checks the operations kit against the server it watches.

    python3 deploy/check-metrics.py --binary target/debug/taskwire

1. The alert rules (deploy/prometheus/alerts.yml) each carry `summary`, `description` and a
   `runbook` naming a section of deploy/RUNBOOK.md that exists, and each has a unit test
   where it fires and one where it does not (deploy/prometheus/alerts.test.yml).
2. With promtool on the PATH, every PromQL expression of the Grafana dashboard parses (its
   Grafana variables replaced by sample values).
3. Every `taskwire_*` metric the dashboard and the rules use is exported by a running
   server: the binary is started on the embedded defaults (SQLite, the in-process Kafka
   mock) in a temporary directory on a free port, a few API calls make the labelled series
   appear (the Prometheus client lists a labelled family only once it has a series), and
   `/metrics` is scraped until every family used is there. The label names each
   expression selects or groups by must exist on its metrics, and each label value matched
   with `=` must have been seen.

Exits 1 naming every problem. Needs Python 3.9+ and PyYAML (Debian: python3-yaml).
"""

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent
DASHBOARD = DEPLOY / "grafana" / "taskwire.json"
RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
RUNBOOK = DEPLOY / "RUNBOOK.md"

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Labels Prometheus adds to every scraped series, and the bucket label of histograms.
TARGET_LABELS = {"job", "instance"}
# Sample values for the dashboard's Grafana variables, so its expressions parse as PromQL.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$create_operations": "CreateTask|CreateTasks",
    "$instance": ".*",
    "$job": ".*",
}

METRIC = re.compile(r"\btaskwire_[A-Za-z0-9_]+")
SELECTOR = re.compile(r"\b(taskwire_[A-Za-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
LABEL_VALUES = re.compile(r"label_values\(.*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$")
SERIES = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s")
LABEL_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Problems(list):
    def add(self, message):
        self.append(message)
        print(f"  FAIL {message}")


# --- what the kit uses ---------------------------------------------------------------------


def dashboard_expressions():
    """(where, expr) for every target of the dashboard."""
    found = []

    def walk(node, title):
        if isinstance(node, dict):
            title = node.get("title", title)
            if isinstance(node.get("expr"), str):
                found.append((f"dashboard panel '{title}'", node["expr"]))
            for value in node.values():
                walk(value, title)
        elif isinstance(node, list):
            for value in node:
                walk(value, title)

    walk(json.loads(DASHBOARD.read_text()), "?")
    return found


def dashboard_variable_queries():
    """(where, query) for the dashboard's query variables (`label_values(...)`): not PromQL,
    but the metrics and labels they name must exist too."""
    variables = json.loads(DASHBOARD.read_text()).get("templating", {}).get("list", [])
    return [(f"dashboard variable '{v['name']}'", v["definition"]) for v in variables if v.get("type") == "query"]


def rules():
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def rule_expressions():
    return [(f"rule {rule.get('alert') or rule.get('record')}", rule["expr"]) for rule in rules()]


# --- 1. the rules carry runbook notes and tests -----------------------------------------------


def github_anchor(heading):
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def check_rules(problems):
    print("alert rules: annotations, runbook sections, unit tests")
    anchors = {
        github_anchor(line.lstrip("#"))
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("#")
    }
    firing, quiet = set(), set()
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    alerts = [rule for rule in rules() if "alert" in rule]
    for rule in alerts:
        name, notes = rule["alert"], rule.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            if not notes.get(key):
                problems.add(f"{name}: no '{key}' annotation")
        runbook = notes.get("runbook", "")
        path, _, anchor = runbook.partition("#")
        if runbook and (path != "deploy/RUNBOOK.md" or anchor not in anchors):
            problems.add(f"{name}: runbook '{runbook}' is not a section of deploy/RUNBOOK.md")
        if name not in firing:
            problems.add(f"{name}: no unit test where it fires")
        if name not in quiet:
            problems.add(f"{name}: no unit test where it does not fire")
    print(f"  {len(alerts)} alerts checked")


# --- 2. the dashboard's PromQL parses ------------------------------------------------------


def check_dashboard_syntax(problems, promtool):
    if not promtool:
        print("dashboard PromQL syntax: promtool not found, skipped")
        return
    print("dashboard PromQL syntax (promtool check rules)")
    records = []
    for i, (where, expr) in enumerate(dashboard_expressions()):
        for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
            expr = expr.replace(variable, value)
        if "$" in expr:
            problems.add(f"{where}: an unknown Grafana variable in {expr}")
        records.append({"record": f"dashboard:expr_{i}", "expr": expr})
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as file:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}, file)
        file.flush()
        run = subprocess.run([promtool, "check", "rules", file.name], capture_output=True, text=True)
    if run.returncode != 0:
        problems.add(f"dashboard expressions do not parse:\n{run.stdout}{run.stderr}")
    else:
        print(f"  {len(records)} expressions parse")


# --- 3. a running server exports them ------------------------------------------------------


class Server:
    """The binary on embedded defaults in a temporary directory, stopped by `stop()`."""

    def __init__(self, binary):
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="taskwire-metrics-check-"))
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # Inherited TASKWIRE_* settings (a CI lane's, a developer's) must not leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKWIRE_")}
        env.update(
            {
                "TASKWIRE_LISTEN": f"127.0.0.1:{self.port}",
                "TASKWIRE_DATABASE_URL": f"sqlite://{self.dir}/taskwire.db?mode=rwc",
                "TASKWIRE_DATA_DIR": str(self.dir / "data"),
                "TASKWIRE_JWT_SECRET": secrets.token_hex(32),
                # Low limits so that a few calls make the refusal series appear.
                "TASKWIRE_LIMIT_DEPTH": "4",
                "TASKWIRE_RATE_LIMIT_INVALID_TOKENS": "1",
                "RUST_LOG": "warn",
            }
        )
        self.env = env
        self.log = open(self.dir / "server.log", "wb")
        self.process = subprocess.Popen(
            [binary, "serve"], cwd=self.dir, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def log_tail(self):
        return (self.dir / "server.log").read_text(errors="replace")[-4000:]

    def get(self, path, headers=None):
        request = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def gql(self, token, query, variables=None):
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        request = urllib.request.Request(self.base + "/graphql", data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            return {"http_status": e.code, "body": e.read().decode()}

    def wait_ready(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"the server was not ready within {seconds}s:\n{self.log_tail()}")

    def token(self, *roles):
        args = [self.binary, "token", "--sub", "metrics-check", "--ttl", "1h"]
        for role in roles:
            args += ["--role", role]
        run = subprocess.run(args, cwd=self.dir, env=self.env, capture_output=True, text=True, check=True)
        return run.stdout.strip().splitlines()[-1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exercise(server):
    """API calls after which the labelled series the kit uses exist."""
    token = server.token("admin", "client")
    create = (
        "mutation CreateTask($input: CreateTaskInput!) { createTask(input: $input) { created task { id } } }"
    )
    created = server.gql(token, create, {"input": {"queue": "metrics-check", "kind": "probe", "payload": {}}})
    task_id = created.get("data", {}).get("createTask", {}).get("task", {}).get("id")
    if not task_id:
        raise RuntimeError(f"createTask failed: {created}")
    # A scheduled task for the scheduler to promote (reaped_total{reason="promoted"}).
    run_at = (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    server.gql(token, create, {"input": {"queue": "metrics-check", "kind": "later", "payload": {}, "runAt": run_at}})
    get = "query GetTask($id: ID!) { task(id: $id) { id status } }"
    server.gql(token, get, {"id": task_id})
    # An id nobody created: a miss at every cache level.
    server.gql(token, get, {"id": "01a1fca2-914b-7a91-b2e6-b4fb52f9da32"})
    # Deeper than TASKWIRE_LIMIT_DEPTH: query_limit_rejections_total.
    server.gql(token, "query Deep { tasks(first: 1) { edges { node { events(last: 1) { seq } } } } }")
    # Refused tokens past TASKWIRE_RATE_LIMIT_INVALID_TOKENS: rate_limited_total.
    for _ in range(4):
        server.gql("not-a-token", "{ __typename }")


def parse_exposition(text):
    """{family: {"type": t, "labels": {name: {values}}}} from Prometheus text."""
    families = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            families[name] = {"type": kind, "labels": {}}
    for line in text.splitlines():
        match = SERIES.match(line)
        if not match or line.startswith("#"):
            continue
        family = family_of(match.group(1), families)
        if family is None:
            continue
        for label, value in LABEL_PAIR.findall(match.group(3) or ""):
            families[family]["labels"].setdefault(label, set()).add(value)
    return families


def family_of(name, families):
    if name in families:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        base = name[: -len(suffix)]
        if name.endswith(suffix) and families.get(base, {}).get("type") in ("histogram", "summary"):
            return base
    return None


def used_metrics(expressions):
    used = {}
    for where, expr in expressions:
        for name in METRIC.findall(expr):
            used.setdefault(name, set()).add(where)
    return used


def scrape_until_complete(server, used, seconds):
    deadline = time.monotonic() + seconds
    while True:
        status, text = server.get("/metrics")
        if status != 200:
            raise RuntimeError(f"GET /metrics answered {status}")
        families = parse_exposition(text)
        missing = [name for name in used if family_of(name, families) is None]
        if not missing or time.monotonic() >= deadline:
            return families, missing
        time.sleep(0.5)


def check_labels(problems, expressions, families):
    for where, expr in expressions:
        names = {family_of(n, families) for n in METRIC.findall(expr)} - {None}
        known = set(TARGET_LABELS)
        for name in names:
            known |= set(families[name]["labels"])
            if families[name]["type"] in ("histogram", "summary"):
                known.add("le" if families[name]["type"] == "histogram" else "quantile")
        for metric, matchers in SELECTOR.findall(expr):
            family = family_of(metric, families)
            if family is None:
                continue
            labels = families[family]["labels"]
            for label, op, value in MATCHER.findall(matchers):
                if label in TARGET_LABELS:
                    continue
                if label not in labels and not (label == "le" and metric.endswith("_bucket")):
                    problems.add(f"{where}: {metric} has no label '{label}'")
                elif op == "=" and "$" not in value and value not in labels.get(label, ()):
                    problems.add(f"{where}: {metric}{{{label}=\"{value}\"}} was never seen (values: {sorted(labels[label])})")
        for label in LABEL_VALUES.findall(expr):
            if label not in known:
                problems.add(f"{where}: label '{label}' is on none of {sorted(names)}")
        for group in GROUPING.findall(expr):
            for label in filter(None, (part.strip() for part in group.split(","))):
                if label not in known:
                    problems.add(f"{where}: grouping label '{label}' is on none of {sorted(names)}")


def check_server(problems, binary, seconds):
    expressions = dashboard_expressions() + dashboard_variable_queries() + rule_expressions()
    used = used_metrics(expressions)
    print(f"metrics used: {len(used)} names in {len(expressions)} expressions; starting {binary}")
    server = Server(binary)
    try:
        server.wait_ready(90)
        exercise(server)
        families, missing = scrape_until_complete(server, used, seconds)
    except Exception as e:  # noqa: BLE001 (any failure to run the server is a check failure)
        problems.add(f"running the server: {e}")
        return
    finally:
        # Also on Ctrl-C or SIGTERM (see main): the server never outlives the check.
        server.stop()
    print(f"  the server exports {len(families)} families on the embedded defaults")
    for name in sorted(missing):
        problems.add(f"{name} is not exported (used by {', '.join(sorted(used[name]))})")
    check_labels(problems, expressions, families)
    if server.process.returncode not in (0, -signal.SIGTERM):
        problems.add(f"the server exited with {server.process.returncode} on SIGTERM:\n{server.log_tail()}")
    if not problems:
        shutil.rmtree(server.dir, ignore_errors=True)
    else:
        print(f"  server log and database kept in {server.dir}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", required=True, help="the taskwire binary to run")
    parser.add_argument("--wait", type=float, default=30, help="seconds to wait for every family to appear")
    args = parser.parse_args()
    # SIGTERM (a cancelled CI job) unwinds like Ctrl-C, so the server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"error: {args.binary} is not an executable (build it: cargo build -p taskwire-api)")
    problems = Problems()
    check_rules(problems)
    check_dashboard_syntax(problems, shutil.which("promtool"))
    check_server(problems, args.binary, args.wait)
    if problems:
        print(f"\n{len(problems)} problem(s)")
        sys.exit(1)
    print("\nOK: every metric and label the dashboard and the alert rules use is exported")


if __name__ == "__main__":
    main()
