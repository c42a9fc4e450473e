#!/usr/bin/env bash
# Compares contenders of benchmark binaries (for example the framework before and after a
# change) on one preloaded topic, alternating them run after run, and prints each one's
# medians: messages/s, CPU seconds per run (user + system), voluntary and involuntary context
# switches and minor page faults per 1,000 messages (from /usr/bin/time), and instructions per
# message where `perf stat` can count them (not in most virtual machines: then "-").
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
perf_out="$(mktemp)"
trap 'rm -f "$results" "$perf_out"' EXIT

# perf counts instructions only where the machine exposes its counters.
perf=()
if perf stat -x, -e instructions:u true 2>&1 | grep -q '^[0-9]'; then
    perf=(perf stat -x, -e instructions:u -o "$perf_out" --)
fi

for round in $(seq "$rounds"); do
    for spec in "$@"; do
        binary="${spec%:*}"
        contender="${spec##*:}"
        output="$({ /usr/bin/time -f "cpu %U %S %w %c %R" "${perf[@]}" "$binary" contender \
            "$contender" --brokers "$brokers" --topic "$topic" \
            --group "compare-$round-$RANDOM$RANDOM" --messages "$messages"; } 2>&1)"
        count="$(grep '^{' <<<"$output" | python3 -c \
            'import json, sys; d = json.load(sys.stdin); print(d["messages"], d["seconds"])')"
        read -r counted seconds <<<"$count"
        rate="$(python3 -c "print(round($counted / $seconds))")"
        read -r cpu switches involuntary faults < <(grep '^cpu ' <<<"$output" |
            awk -v n="$counted" '{ print $2 + $3, $4 * 1000 / n, $5 * 1000 / n, $6 * 1000 / n }')
        instructions=-
        if ((${#perf[@]})); then
            instructions="$(awk -F, -v n="$counted" '/instructions/ { printf "%.0f", $1 / n }' "$perf_out")"
        fi
        echo "$spec $rate $cpu $switches $involuntary $faults $instructions" | tee -a "$results"
    done
done

python3 - "$results" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    spec, *figures = line.split()
    runs[spec].append(figures)
def median(spec, column):
    values = [float(r[column]) for r in runs[spec] if r[column] != "-"]
    return statistics.median(values) if values else None
print(f"\nmedians of {len(next(iter(runs.values())))} runs each:")
for spec in runs:
    instructions = median(spec, 5)
    print(f"{spec}: {median(spec, 0):,.0f} msgs/s, {median(spec, 1):.2f} CPU s per run, "
          f"per 1k msgs: {median(spec, 2):.1f} voluntary and {median(spec, 3):.1f} involuntary "
          f"context switches, {median(spec, 4):.1f} minor faults; "
          + (f"{instructions:,.0f} instructions per msg" if instructions else "instructions not counted here"))
PY
