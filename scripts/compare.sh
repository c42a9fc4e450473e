#!/usr/bin/env bash
# Compares contenders of benchmark binaries (for example the framework before and after a
# change) on one preloaded topic, alternating them run after run, and prints each one's
# median messages/s and CPU seconds per run (user + system, from /usr/bin/time).
#
#   scripts/compare.sh ROUNDS BINARY:CONTENDER [BINARY:CONTENDER ...]
#
# e.g., with a copy of the benchmark binary from before a change in /tmp/before:
#   scripts/compare.sh 6 /tmp/before:b1 /tmp/before:f target/release/deps/benchmark-HASH:f
#
# Needs a broker (BROKERS, default 127.0.0.1:9092) and a topic (TOPIC, default prof8) holding
# MESSAGES messages (default 1000000), filled once with
#   BINARY contender preload --brokers B --topic T --group - --messages N --partitions 8 --payload 100
set -euo pipefail

rounds="${1:?rounds}"
shift
brokers="${BROKERS:-127.0.0.1:9092}"
topic="${TOPIC:-prof8}"
messages="${MESSAGES:-1000000}"
results="$(mktemp)"
trap 'rm -f "$results"' EXIT

for round in $(seq "$rounds"); do
    for spec in "$@"; do
        binary="${spec%:*}"
        contender="${spec##*:}"
        output="$({ /usr/bin/time -f "cpu %U %S" "$binary" contender "$contender" \
            --brokers "$brokers" --topic "$topic" --group "compare-$round-$RANDOM$RANDOM" \
            --messages "$messages"; } 2>&1)"
        rate="$(grep '^{' <<<"$output" | python3 -c \
            'import json, sys; d = json.load(sys.stdin); print(round(d["messages"] / d["seconds"]))')"
        cpu="$(grep '^cpu ' <<<"$output" | awk '{ print $2 + $3 }')"
        echo "$spec $rate $cpu" | tee -a "$results"
    done
done

python3 - "$results" <<'PY'
import collections, statistics, sys
rates, cpus = collections.defaultdict(list), collections.defaultdict(list)
for line in open(sys.argv[1]):
    spec, rate, cpu = line.split()
    rates[spec].append(int(rate))
    cpus[spec].append(float(cpu))
print(f"\nmedians of {len(next(iter(rates.values())))} runs each:")
for spec in rates:
    print(f"{spec}: {statistics.median(rates[spec]):,.0f} msgs/s, "
          f"{statistics.median(cpus[spec]):.2f} CPU s per run")
PY
