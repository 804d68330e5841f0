#!/usr/bin/env python3
"""Ranks the statements of a MariaDB slow log by the rows they examined.

MariaDB's digest table (performance_schema) leaves prepared statements out, and nearly
all of Taskwire's statements are prepared. The slow log, at `long_query_time=0`, lists
every statement with its rows examined and sent. This groups them by shape (literals and
`IN (…)` lists folded) and prints, per shape: executions, rows examined and sent in all
and per execution, and total time. Measurement only; see docs/BENCHMARKS.md for the
procedure:

    mysql -uroot -e "SET GLOBAL slow_query_log_file='/tmp/slow.log', long_query_time=0, \
        slow_query_log=1"
    tests/bench/run-benchmarks.sh real dispatch
    mysql -uroot -e "SET GLOBAL slow_query_log=0, long_query_time=10"
    tests/bench/slowlog-summary.py /tmp/slow.log [--tasks 10000] [--top 25]
"""

import argparse
import re
import sys
from collections import defaultdict

HEADER = re.compile(r"^# Query_time: ([\d.]+)\s+Lock_time: [\d.]+\s+Rows_sent: (\d+)\s+Rows_examined: (\d+)")


def shape(sql: str) -> str:
    """The statement with its literals folded, so executions of one shape group together."""
    sql = re.sub(r"\s+", " ", sql.strip().rstrip(";"))
    sql = re.sub(r"'(?:[^'\\]|\\.|'')*'", "?", sql)
    sql = re.sub(r"\b\d+(?:\.\d+)?\b", "?", sql)
    sql = re.sub(r"\((?:\s*\?\s*,)+\s*\?\s*\)", "(?…)", sql)
    sql = re.sub(r"(?:\(\?…\)|\(\?(?:, ?\?)*\))(?:\s*,\s*(?:\(\?…\)|\(\?(?:, ?\?)*\)))+", "(?…),…", sql)
    return sql


def entries(lines):
    """(time, rows sent, rows examined, plan flags, statement) per logged statement."""
    current = None
    flags = set()
    body = []
    for line in lines:
        header = HEADER.match(line)
        if header:
            if current and body:
                yield (*current, flags, " ".join(body))
            current, flags, body = tuple(float(g) if i == 0 else int(g) for i, g in enumerate(header.groups())), set(), []
        elif line.startswith("#"):
            # `log_slow_verbosity=query_plan` adds "# Full_scan: Yes  …  Filesort: No …".
            flags.update(re.findall(r"(Full_scan|Filesort|Tmp_table): Yes", line))
        elif line.startswith("SET timestamp=") or line.startswith("use "):
            continue
        elif current is not None and line.strip():
            body.append(line.strip())
    if current and body:
        yield (*current, flags, " ".join(body))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log")
    parser.add_argument("--tasks", type=int, default=0, help="divide totals by this many tasks")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    groups = defaultdict(lambda: [0, 0, 0, 0.0, set()])
    with open(args.log, encoding="utf-8", errors="replace") as log:
        for seconds, sent, examined, flags, sql in entries(log):
            group = groups[shape(sql)]
            group[0] += 1
            group[1] += examined
            group[2] += sent
            group[3] += seconds
            group[4] |= flags
    total = [sum(g[i] for g in groups.values()) for i in range(4)]
    per = f" per {args.tasks} tasks" if args.tasks else ""
    print(f"{total[0]} statements, {total[1]} rows examined, {total[2]} sent, {total[3]:.2f} s{per}")
    if args.tasks:
        print(f"per task: {total[0] / args.tasks:.2f} statements, {total[1] / args.tasks:.1f} rows examined")
    print(f"{'execs':>8} {'examined':>10} {'ex/exec':>8} {'sent/exec':>9} {'time s':>7}  statement [plan]")
    ranked = sorted(groups.items(), key=lambda item: -item[1][1])
    for sql, (count, examined, sent, seconds, flags) in ranked[: args.top]:
        plan = f" [{', '.join(sorted(flags))}]" if flags else ""
        print(f"{count:>8} {examined:>10} {examined / count:>8.1f} {sent / count:>9.1f} {seconds:>7.2f}  {sql[:220]}{plan}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
