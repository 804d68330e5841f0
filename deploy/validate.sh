#!/usr/bin/env bash
# Validates deploy/ offline, without a Docker daemon or network access to image registries:
#
# - promtool: the Prometheus configuration, the alert rules and their unit tests;
# - the Grafana dashboard is what grafana/dashboard.py writes, and is valid JSON;
# - compose.yaml against the Compose Specification's JSON schema (check-jsonschema's
#   vendored copy), and `docker compose config` (or `docker-compose config`) when one is
#   installed, with the placeholder values of .env.example;
# - the Dockerfile parses with BuildKit's parser (PyPI `dockerfile`), has a build and a
#   runtime stage, a non-root USER and a HEALTHCHECK in the final stage.
#
# Needs promtool (Debian: prometheus) and python3 with venv; the Python validators are
# installed once into $TASKWIRE_OPS_VENV (default ~/.cache/taskwire/ops-venv), pinned.
# What it cannot do (pull and run the images) is listed in deploy/README.md.
set -euo pipefail
cd "$(dirname "$0")"

step() { printf -- '--- %s\n' "$*"; }

step "promtool check config / check rules / test rules"
promtool check config prometheus/prometheus.yml
promtool check rules prometheus/alerts.yml
promtool test rules prometheus/alerts.test.yml

step "Grafana dashboard is generated and valid JSON"
python3 grafana/dashboard.py --check
python3 -m json.tool grafana/taskwire.json >/dev/null

venv=${TASKWIRE_OPS_VENV:-$HOME/.cache/taskwire/ops-venv}
if ! "$venv/bin/python" -c 'import dockerfile, check_jsonschema' >/dev/null 2>&1; then
  step "installing the validators into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check check-jsonschema==0.39.0 dockerfile==3.4.0
fi

step "compose.yaml against the Compose Specification schema"
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec compose.yaml

if docker compose version >/dev/null 2>&1; then
  step "docker compose config"
  docker compose --env-file .env.example -f compose.yaml config --quiet
elif command -v docker-compose >/dev/null 2>&1; then
  step "docker-compose config ($(docker-compose version --short))"
  docker-compose --env-file .env.example -f compose.yaml config --quiet
else
  step "docker compose config: skipped (neither the compose plugin nor docker-compose is installed)"
fi

step "Dockerfile (BuildKit parser)"
"$venv/bin/python" - ../Dockerfile <<'PY'
import sys
import dockerfile

commands = dockerfile.parse_file(sys.argv[1])
stages = [i for i, c in enumerate(commands) if c.cmd == "FROM"]
final = commands[stages[-1]:]
problems = []
if len(stages) < 2:
    problems.append("not a multi-stage build")
users = [c.value[0] for c in final if c.cmd == "USER"]
if not users or users[-1].split(":")[0] in ("root", "0"):
    problems.append("the final stage does not switch to a non-root USER")
if not any(c.cmd == "HEALTHCHECK" for c in final):
    problems.append("the final stage has no HEALTHCHECK")
if problems:
    sys.exit("Dockerfile: " + "; ".join(problems))
print(f"Dockerfile: {len(stages)} stages, runs as {users[-1]}, has a HEALTHCHECK")
PY
step "deploy/ validated offline"
