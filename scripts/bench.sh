#!/usr/bin/env bash
# Runs the whole benchmark and writes its figures into BENCHMARKS.md: starts Apache Kafka with
# scripts/kafka.sh, runs `cargo bench --bench benchmark` against it and against the embedded
# cluster, stops the broker (also on failure), and replaces the results section of
# BENCHMARKS.md with the report the run produced. Extra arguments go to the benchmark, e.g.
# `scripts/bench.sh --runs 5` or `scripts/bench.sh --scale 0.1` for a quick look.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

trap 'bash scripts/kafka.sh stop' EXIT
bash scripts/kafka.sh start
port="${KAFKA_PORT:-9092}"
cargo bench --bench benchmark -- --brokers "127.0.0.1:$port" "$@"

report="target/bench/report.md"
python3 - "$report" <<'PY'
import sys
report = open(sys.argv[1]).read().strip()
path = "BENCHMARKS.md"
text = open(path).read()
begin, end = "<!-- results:begin -->", "<!-- results:end -->"
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open(path, "w").write(f"{head}{begin}\n{report}\n{end}{tail}")
PY
echo "bench.sh: BENCHMARKS.md updated from $report"
