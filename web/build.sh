#!/usr/bin/env bash
# Re-creates api/assets/ from the pinned packages (package-lock.json).
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --cache "${NPM_CACHE:-$HOME/.cache/taskwire/npm}"
npm run build
