#!/usr/bin/env bash
# A single-node Apache Kafka (KRaft, combined broker and controller) on 127.0.0.1 for the
# tests, the examples and CI, run from Kafka's official jars on Maven Central.
#
#   scripts/kafka.sh start               fetch the jars (once), format a fresh log directory,
#                                        start the broker and wait until it answers
#   scripts/kafka.sh stop                stop the broker this script started, by its pid
#   scripts/kafka.sh status              say whether it runs
#   scripts/kafka.sh run-class CLASS ..  run one of Kafka's tools with the same jars, e.g.
#                                        org.apache.kafka.tools.consumer.group.ConsumerGroupCommand
#
# Everything lives under .kafka/ (ignored by git): libs/ (the jars), data/ (the log
# directory, new at every start), logs/ (server.log, printed when the start fails).
# KAFKA_PORT (default 9092) and KAFKA_CONTROLLER_PORT (default 9093) choose the ports.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
home="$root/.kafka"
libs="$home/libs"
data="$home/data"
logs="$home/logs"
pidfile="$home/kafka.pid"
pom="$root/scripts/kafka/pom.xml"
port="${KAFKA_PORT:-9092}"
controller_port="${KAFKA_CONTROLLER_PORT:-9093}"
start_timeout=120

die() {
  echo "kafka.sh: $*" >&2
  exit 1
}

# Copies the jars the pom lists into libs/, unless the same pom was fetched before.
fetch_jars() {
  local stamp
  stamp="$(sha256sum "$pom" | cut -d' ' -f1)"
  if [[ -f "$libs/.fetched" && "$(cat "$libs/.fetched")" == "$stamp" ]]; then
    return
  fi
  command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch Kafka's jars"
  echo "kafka.sh: fetching Kafka's jars from Maven Central"
  rm -rf "$libs"
  mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
    -DoutputDirectory="$libs" -DincludeScope=runtime
  echo "$stamp" >"$libs/.fetched"
}

write_logging_config() {
  mkdir -p "$logs"
  cat >"$home/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $logs/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
EOF
  cat >"$home/tools-log4j2.properties" <<EOF
status = warn
appender.stderr.type = Console
appender.stderr.name = stderr
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = %p %m%n
rootLogger.level = WARN
rootLogger.appenderRef.stderr.ref = stderr
EOF
}

write_server_config() {
  cat >"$home/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$data
# One node: every internal topic has one replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests create their own topics, and must not wait for late joiners.
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
EOF
}

java_cmd() {
  command -v java >/dev/null || die "Java 17 or newer is needed to run Kafka"
  java -Djava.awt.headless=true -cp "$libs/*" "$@"
}

running_pid() {
  [[ -f "$pidfile" ]] || return 1
  local pid
  pid="$(cat "$pidfile")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
  if pid="$(running_pid)"; then
    echo "kafka.sh: already running (pid $pid) on 127.0.0.1:$port"
    return
  fi
  port_open "$port" && die "127.0.0.1:$port is taken by another process"
  fetch_jars
  write_logging_config
  write_server_config
  rm -rf "$data"
  : >"$logs/server.log"
  local cluster_id
  cluster_id="$(java_cmd -Dlog4j2.configurationFile="$home/tools-log4j2.properties" \
    kafka.tools.StorageTool random-uuid)"
  java_cmd -Dlog4j2.configurationFile="$home/tools-log4j2.properties" \
    kafka.tools.StorageTool format -t "$cluster_id" -c "$home/server.properties" >"$logs/format.log"

  nohup java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$home/log4j2.properties" \
    -cp "$libs/*" kafka.Kafka "$home/server.properties" >"$logs/stdout.log" 2>&1 &
  echo $! >"$pidfile"
  local pid=$!

  local waited=0
  until grep -q "Kafka Server started" "$logs/server.log" && port_open "$port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "kafka.sh: the broker exited during start; its logs:" >&2
      tail -n 60 "$logs/stdout.log" "$logs/server.log" >&2
      rm -f "$pidfile"
      exit 1
    fi
    if ((waited >= start_timeout)); then
      echo "kafka.sh: the broker did not answer within ${start_timeout}s; its log:" >&2
      tail -n 60 "$logs/server.log" >&2
      stop
      exit 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  echo "kafka.sh: Kafka runs on 127.0.0.1:$port (pid $pid, started in ~${waited}s)"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then
    echo "kafka.sh: not running"
    rm -f "$pidfile"
    return
  fi
  kill -TERM "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "kafka.sh: the broker (pid $pid) ignored SIGTERM for 30s; killing it" >&2
    kill -KILL "$pid"
  fi
  rm -f "$pidfile"
  echo "kafka.sh: stopped (pid $pid)"
}

status() {
  if pid="$(running_pid)"; then
    echo "kafka.sh: running (pid $pid) on 127.0.0.1:$port"
  else
    echo "kafka.sh: not running"
    return 1
  fi
}

run_class() {
  fetch_jars >&2
  write_logging_config
  command -v java >/dev/null || die "Java 17 or newer is needed to run Kafka's tools"
  # exec: the caller's wait (and its resource usage) is the tool's own.
  exec java -Djava.awt.headless=true -cp "$libs/*" \
    -Dlog4j2.configurationFile="$home/tools-log4j2.properties" "$@"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  run-class)
    shift
    [[ $# -ge 1 ]] || die "run-class needs a class name"
    run_class "$@"
    ;;
  *) die "usage: scripts/kafka.sh start|stop|status|run-class CLASS [ARGS...]" ;;
esac
