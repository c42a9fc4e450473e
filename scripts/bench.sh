#!/usr/bin/env bash
# Runs the whole benchmark and writes its figures into BENCHMARKS.md: starts Apache Kafka with
# scripts/kafka.sh, runs `cargo bench --bench benchmark` against it and against the embedded
# cluster (the peers in benches/ are built by the benchmark: Go for Sarama and franz-go, Cargo
# for Arroyo and the record-batch spike), stops the broker (also on failure), and replaces the
# results section of BENCHMARKS.md with the report the run produced. Extra arguments go to the benchmark, e.g.
# `scripts/bench.sh --runs 5` or `scripts/bench.sh --scale 0.1` for a quick look.
#
# `scripts/bench.sh ordering` runs only the ordering-mode table, on the embedded cluster (no
# broker), and replaces its section of BENCHMARKS.md. `scripts/bench.sh sinks` runs only the
# database sink table (SQLite, and PostgreSQL from scripts/postgres.sh), on the embedded
# cluster, and replaces its section.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# Replaces the text between <!-- $1:begin --> and <!-- $1:end --> in BENCHMARKS.md with file $2.
replace_section() {
    python3 - "$1" "$2" <<'PY'
import sys
section, report = sys.argv[1], open(sys.argv[2]).read().strip()
path = "BENCHMARKS.md"
text = open(path).read()
begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open(path, "w").write(f"{head}{begin}\n{report}\n{end}{tail}")
PY
    echo "bench.sh: BENCHMARKS.md ($1) updated from $2"
}

if [ "${1:-}" = ordering ]; then
    shift
    cargo bench --bench benchmark -- ordering "$@"
    replace_section ordering target/bench/ordering.md
    exit 0
fi

if [ "${1:-}" = sinks ]; then
    shift
    trap 'bash scripts/postgres.sh stop' EXIT
    bash scripts/postgres.sh start
    cargo bench --bench benchmark -- sinks --database-url "$(bash scripts/postgres.sh url)" "$@"
    replace_section sinks target/bench/sinks.md
    exit 0
fi

# The Arroyo peer (benches/arroyo) builds librdkafka with CMake, which needs libcurl's headers;
# without them the benchmark leaves Arroyo out and says so.
if ! echo '#include <curl/curl.h>' | cc -E - >/dev/null 2>&1 && command -v apt-get >/dev/null; then
    echo "bench.sh: installing libcurl's headers (libcurl4-openssl-dev) for the Arroyo peer"
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libcurl4-openssl-dev >/dev/null
fi

trap 'bash scripts/kafka.sh stop' EXIT
bash scripts/kafka.sh start
port="${KAFKA_PORT:-9092}"
cargo bench --bench benchmark -- --brokers "127.0.0.1:$port" "$@"
replace_section results target/bench/report.md
