#!/usr/bin/env bash
# A single-node Apache Kafka (KRaft, combined broker and controller) on 127.0.0.1 for the
# tests, the examples and CI, run from Kafka's official jars on Maven Central.
#
# Two listeners: PLAINTEXT on KAFKA_PORT (9092), where everyone is a super user, and
# SASL_SSL on KAFKA_SASL_PORT (9094) with SCRAM-SHA-256/512, PLAIN and OAUTHBEARER (unsecured
# JWTs, for tests), a certificate signed by a throwaway CA (.kafka/tls/ca.pem) and ACLs
# (KRaft's StandardAuthorizer):
#   admin    super user                       (password admin-secret)
#   consumer READ, DESCRIBE, WRITE on topics "secure-ok-*", READ on groups "secure-ok-*";
#            READ, DESCRIBE on topics "secure-nogroup-*" and "secure-nowrite-*", READ on
#            groups "secure-noread-*" and "secure-nowrite-*"   (password consumer-secret)
#   stranger no ACLs at all                   (password stranger-secret)
# .kafka/tls/other-ca.pem is a second CA that signed nothing, for the untrusted-certificate
# test.
#
#   scripts/kafka.sh start               fetch the jars (once), format a fresh log directory,
#                                        start the broker and wait until it answers
#   scripts/kafka.sh stop                stop the broker this script started, by its pid
#   scripts/kafka.sh resume              start the stopped broker again on its log directory
#                                        (what it held survives: a broker restart)
#   scripts/kafka.sh status              say whether it runs
#   scripts/kafka.sh run-class CLASS ..  run one of Kafka's tools with the same jars, e.g.
#                                        org.apache.kafka.tools.consumer.group.ConsumerGroupCommand
#
# Everything lives under .kafka/ (ignored by git): libs/ (the jars), data/ (the log
# directory, new at every start), tls/ (certificates, new at every start), logs/ (server.log,
# printed when the start fails).
# KAFKA_PORT (default 9092), KAFKA_CONTROLLER_PORT (9093) and KAFKA_SASL_PORT (9094) choose
# the ports; KAFKA_HOME (default .kafka) the directory of everything but the jars, so that
# tests can run brokers of their own beside the shared one (to stop and restart them);
# KAFKA_SECURED=0 leaves the SASL_SSL listener, its users and ACLs out (a faster start).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
home="${KAFKA_HOME:-$root/.kafka}"
libs="$root/.kafka/libs"
data="$home/data"
logs="$home/logs"
pidfile="$home/kafka.pid"
pom="$root/scripts/kafka/pom.xml"
port="${KAFKA_PORT:-9092}"
controller_port="${KAFKA_CONTROLLER_PORT:-9093}"
sasl_port="${KAFKA_SASL_PORT:-9094}"
secured="${KAFKA_SECURED:-1}"
tls="$home/tls"
# Throwaway secrets for a broker that lives for one test run on 127.0.0.1.
store_password="kafka-actors-test"
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

# A throwaway CA, the broker's certificate (for 127.0.0.1 and localhost) signed by it in a
# PKCS12 keystore, and a second CA that signed nothing. Java's keytool only: no other tool.
make_certificates() {
  command -v keytool >/dev/null || die "keytool (Java 17) is needed to make the test certificates"
  rm -rf "$tls"
  mkdir -p "$tls"
  local k=(keytool -storetype PKCS12 -storepass "$store_password" -noprompt)
  for ca in ca other-ca; do
    "${k[@]}" -genkeypair -alias "$ca" -keyalg RSA -keysize 2048 -validity 30 \
      -dname "CN=kafka-actors test $ca" -ext bc:c -keystore "$tls/$ca.p12" >/dev/null 2>&1
    "${k[@]}" -exportcert -rfc -alias "$ca" -keystore "$tls/$ca.p12" -file "$tls/$ca.pem" \
      >/dev/null 2>&1
  done
  "${k[@]}" -genkeypair -alias broker -keyalg RSA -keysize 2048 -validity 30 \
    -dname "CN=localhost" -keystore "$tls/broker.p12" >/dev/null 2>&1
  "${k[@]}" -certreq -alias broker -keystore "$tls/broker.p12" -file "$tls/broker.csr" \
    >/dev/null 2>&1
  "${k[@]}" -gencert -alias ca -keystore "$tls/ca.p12" -infile "$tls/broker.csr" \
    -outfile "$tls/broker.pem" -rfc -validity 30 -ext "SAN=IP:127.0.0.1,DNS:localhost" \
    >/dev/null 2>&1
  "${k[@]}" -importcert -alias ca -file "$tls/ca.pem" -keystore "$tls/broker.p12" \
    >/dev/null 2>&1
  "${k[@]}" -importcert -alias broker -file "$tls/broker.pem" -keystore "$tls/broker.p12" \
    >/dev/null 2>&1
}

write_server_config() {
  local scram="org.apache.kafka.common.security.scram.ScramLoginModule required;"
  local listeners="PLAINTEXT://127.0.0.1:$port"
  local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [[ "$secured" == 1 ]]; then
    listeners="$listeners,SASL_SSL://127.0.0.1:$sasl_port"
    protocols="$protocols,SASL_SSL:SASL_SSL"
  fi
  cat >"$home/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=$listeners,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=$listeners
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
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
# The consumer group protocol (KIP-848) takes session and heartbeat times from the broker:
# as short as the tests' classic settings (6 s, 0.5 s), so that a killed member's partitions
# move as soon under both protocols.
group.consumer.min.session.timeout.ms=3000
group.consumer.session.timeout.ms=6000
group.consumer.min.heartbeat.interval.ms=500
group.consumer.heartbeat.interval.ms=500
EOF
  [[ "$secured" == 1 ]] || return 0
  cat >>"$home/server.properties" <<EOF
# The secured listener.
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN,OAUTHBEARER
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=$scram
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$scram
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_admin="admin-secret" user_consumer="consumer-secret" user_stranger="stranger-secret";
listener.name.sasl_ssl.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub="admin";
listener.name.sasl_ssl.oauthbearer.sasl.server.callback.handler.class=org.apache.kafka.common.security.oauthbearer.internals.unsecured.OAuthBearerUnsecuredValidatorCallbackHandler
ssl.keystore.type=PKCS12
ssl.keystore.location=$tls/broker.p12
ssl.keystore.password=$store_password
ssl.key.password=$store_password
# ACLs. The plaintext listener and the controller are anonymous: super users, so that the
# plain tests need no ACLs.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:ANONYMOUS
allow.everyone.if.no.acl.found=false
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
  ports_free
  fetch_jars
  write_logging_config
  write_server_config
  rm -rf "$data"
  local users=()
  if [[ "$secured" == 1 ]]; then
    make_certificates
    for user in admin:admin-secret consumer:consumer-secret stranger:stranger-secret; do
      for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do
        users+=(--add-scram "$mechanism=[name=${user%%:*},password=${user#*:}]")
      done
    done
  fi
  # Any UUID in Kafka's URL-safe base64 names the cluster: no JVM is needed to make one. Not
  # one that starts with '-' (one in 64): the storage tool would read it as an option and
  # refuse to format (Kafka's own Uuid.randomUuid draws again for the same reason).
  local cluster_id=-
  while [[ "$cluster_id" == -* ]]; do
    cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
  done
  java_cmd -Dlog4j2.configurationFile="$home/tools-log4j2.properties" \
    kafka.tools.StorageTool format -t "$cluster_id" -c "$home/server.properties" \
    "${users[@]}" >"$logs/format.log"
  launch
  if [[ "$secured" == 1 ]]; then
    add_acls
    echo "kafka.sh: Kafka runs on 127.0.0.1:$port and (SASL_SSL) 127.0.0.1:$sasl_port" \
      "(pid $(running_pid))"
  else
    echo "kafka.sh: Kafka runs on 127.0.0.1:$port (pid $(running_pid))"
  fi
}

# Starts the broker again on what it held when it stopped (its users and ACLs too).
resume() {
  if pid="$(running_pid)"; then
    echo "kafka.sh: already running (pid $pid) on 127.0.0.1:$port"
    return
  fi
  [[ -f "$home/server.properties" && -d "$data" ]] || die "nothing to resume in $home: start it first"
  ports_free
  launch
  echo "kafka.sh: Kafka runs again on 127.0.0.1:$port (pid $(running_pid))"
}

ports_free() {
  port_open "$port" && die "127.0.0.1:$port is taken by another process"
  if [[ "$secured" == 1 ]] && port_open "$sasl_port"; then
    die "127.0.0.1:$sasl_port is taken by another process"
  fi
  return 0
}

# Runs the broker on the configuration and log directory in $home, and waits until it
# answers.
launch() {
  : >"$logs/server.log"
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
  echo "kafka.sh: started in ~${waited}s"
}

# The consumer user's ACLs; see the top of this file.
add_acls() {
  acl() {
    java_cmd -Dlog4j2.configurationFile="$home/tools-log4j2.properties" \
      org.apache.kafka.tools.AclCommand --bootstrap-server "127.0.0.1:$port" --add \
      --allow-principal User:consumer --resource-pattern-type prefixed "$@" >>"$logs/acls.log"
  }
  : >"$logs/acls.log"
  acl --operation Read --operation Describe --operation Write --topic secure-ok-
  acl --operation Read --operation Describe --topic secure-nogroup- --topic secure-nowrite-
  acl --operation Read --group secure-ok- --group secure-noread- --group secure-nowrite-
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
  resume) resume ;;
  stop) stop ;;
  status) status ;;
  run-class)
    shift
    [[ $# -ge 1 ]] || die "run-class needs a class name"
    run_class "$@"
    ;;
  *) die "usage: scripts/kafka.sh start|stop|resume|status|run-class CLASS [ARGS...]" ;;
esac
