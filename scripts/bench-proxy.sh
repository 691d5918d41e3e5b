#!/usr/bin/env bash
# Benchmark (not a test): `switchyard proxy` vs HAProxy (Debian) in front of the same two nginx
# backends (Debian nginx, one worker, `return 200`), measured with wrk at the same concurrency and
# duration, alternating in one run. Each proxy runs with 1 and with 2 threads (HAProxy
# `nbthread`, switchyard `threads`); the comparison is each side's best configuration, and the
# same thread count side by side. Writes the "Proxy" section of BENCHMARKS.md up to its first
# "### " subsection (the analysis below it is kept).
#
#   scripts/bench-proxy.sh                 # 5 alternating rounds of 10 s per configuration
#   DURATION=30s CONNECTIONS=64 scripts/bench-proxy.sh
#   SWITCHYARD_BIN=target/release/switchyard scripts/bench-proxy.sh   # skip the build
#   PROXY_THREADS="2" scripts/bench-proxy.sh                          # one thread count only
#   NO_WRITE=1 scripts/bench-proxy.sh                                 # print, leave BENCHMARKS.md
#   TLS=1 scripts/bench-proxy.sh      # clients over TLS (both proxies terminate it; print only)
#
# Both proxies: keep-alive to clients and to servers, X-Forwarded-For on, active HTTP checks
# every 2 s, retries 3 with redispatch, round robin.
set -euo pipefail

# With autogroup scheduling (/proc/sys/kernel/sched_autogroup_enabled = 1, as here) the kernel
# shares the CPUs between sessions first and applies nice only inside a session: `nice -n -15`
# alone left other sessions' builds half of the cores, halving req/s and putting their time
# slices into the p99. So the run moves to a session of its own (one autogroup: the proxies,
# nginx and wrk together, as on a quiet machine) and raises that group's priority
# (AUTOGROUP_NICE, -20 by default; needs root, else a warning and the run goes on). Ctrl-C or
# TERM stops the whole session.
if [ -z "${BENCH_PROXY_SESSION:-}" ] && [ "$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null)" = 1 ] \
  && command -v setsid >/dev/null; then
  export BENCH_PROXY_SESSION=1
  # A background job is not a process group leader, so setsid execs in place: $! leads the
  # new session and its process group.
  setsid "$(realpath "$0")" "$@" &
  session=$!
  trap 'kill -TERM -- "-$session" 2>/dev/null || true' INT TERM
  status=0
  wait "$session" || status=$?
  while kill -0 "$session" 2>/dev/null; do wait "$session" || status=$?; done
  exit "$status"
fi
cd "$(dirname "$0")/.."
AUTOGROUP_NICE="${AUTOGROUP_NICE:--20}"
autogroup="none"
if [ -w /proc/self/autogroup ] && echo "$AUTOGROUP_NICE" 2>/dev/null >/proc/self/autogroup; then
  autogroup="$(cat /proc/self/autogroup)"
elif [ -e /proc/self/autogroup ]; then
  echo "warning: could not set the autogroup's nice to $AUTOGROUP_NICE (not root?); other sessions' load will show" >&2
  autogroup="$(cat /proc/self/autogroup)"
fi

DURATION="${DURATION:-10s}"
ROUNDS="${ROUNDS:-5}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-2}"
WARMUP="${WARMUP:-3s}"
PROXY_THREADS="${PROXY_THREADS:-1 2}"
BIN="${SWITCHYARD_BIN:-}"
if [ -z "$BIN" ]; then
  cargo build --release -p switchyard >&2
  BIN=target/release/switchyard
fi
# The peers come from Debian (nginx-light: the backends); installed when missing.
declare -A packages=([haproxy]=haproxy [wrk]=wrk [nginx]=nginx-light)
missing=()
for command in "${!packages[@]}"; do
  command -v "$command" >/dev/null || missing+=("${packages[$command]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

work="$(mktemp -d)"
pids=()
# TLS=1: both proxies terminate TLS for the clients (one self-signed P-256 certificate; wrk
# speaks HTTP/1.1 over TLS 1.3, one handshake per connection), and the section is only printed.
scheme="http"
if [ -n "${TLS:-}" ]; then
  scheme="https"
  export NO_WRITE=1
fi
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2; exit 1
}

if [ "$scheme" = https ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -days 2 -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
  cat "$work/cert.pem" "$work/key.pem" >"$work/haproxy.pem"
fi

# The backends: one nginx (one worker process, so it takes no more than a core), two ports.
backend_ports=("$(free_port)" "$(free_port)")
mkdir -p "$work/nginx"
cat >"$work/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx;
  proxy_temp_path $work/nginx;
  fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx;
  scgi_temp_path $work/nginx;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  server {
    listen 127.0.0.1:${backend_ports[0]};
    listen 127.0.0.1:${backend_ports[1]};
    location / { default_type text/plain; return 200 "ok\n"; }
  }
}
EOF
nginx -c "$work/nginx.conf" -p "$work" >"$work/nginx.log" 2>&1 &
pids+=($!)
for port in "${backend_ports[@]}"; do wait_port "$port"; done

declare -A ports
declare -A proxy_pids
for threads in $PROXY_THREADS; do
  proxy_port="$(free_port)"
  admin_port="$(free_port)"
  cat >"$work/proxy$threads.toml" <<EOF
[proxy]
listen = "127.0.0.1:$proxy_port"
admin_listen = "127.0.0.1:$admin_port"
threads = $threads
balance = "roundrobin"
retries = 3
redispatch = true
$( [ "$scheme" = https ] && printf 'tls_cert = "%s"\ntls_key = "%s"\n' "$work/cert.pem" "$work/key.pem" || true )

[proxy.check]
inter_ms = 2000
path = "/"

[[proxy.servers]]
name = "s1"
address = "127.0.0.1:${backend_ports[0]}"

[[proxy.servers]]
name = "s2"
address = "127.0.0.1:${backend_ports[1]}"
EOF
  SWITCHYARD_LOG=warn "$BIN" proxy --config "$work/proxy$threads.toml" >"$work/proxy$threads.log" 2>&1 &
  pids+=($!)
  proxy_pids["switchyard-$threads"]=$!
  ports["switchyard-$threads"]="$proxy_port"

  haproxy_port="$(free_port)"
  cat >"$work/haproxy$threads.cfg" <<EOF
global
  nbthread $threads
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  option forwardfor
  retries 3
  option redispatch
frontend fe
  bind 127.0.0.1:$haproxy_port$( [ "$scheme" = https ] && printf ' ssl crt %s alpn h2,http/1.1' "$work/haproxy.pem" || true )
  default_backend be
backend be
  balance roundrobin
  option httpchk GET /
  server s1 127.0.0.1:${backend_ports[0]} check inter 2000
  server s2 127.0.0.1:${backend_ports[1]} check inter 2000
EOF
  haproxy -f "$work/haproxy$threads.cfg" -db >"$work/haproxy$threads.log" 2>&1 &
  pids+=($!)
  proxy_pids["haproxy-$threads"]=$!
  ports["haproxy-$threads"]="$haproxy_port"
done
for name in "${!ports[@]}"; do wait_port "${ports[$name]}"; done
echo "clients over $scheme" >&2

# CPU time (user + system, clock ticks) a process has used so far: the proxy's CPU per request
# moves much less with the neighbours' load than its req/s does.
cpu_ticks() {
  awk '{print $14 + $15}' "/proc/$1/stat"
}
# Busy CPU time of the whole machine (user, nice, system, irq, softirq; clock ticks), to tell
# how much of it went to processes outside the benchmark during a round. Softirq counts: the
# loopback's TCP work runs there and is also charged to the processes it interrupted.
busy_ticks() {
  awk 'NR == 1 {print $2 + $3 + $4 + $7 + $8}' /proc/stat
}
nginx_worker="$(pgrep -P "${pids[0]}" | head -1)"

run_wrk() { # name port pid -> "req/s p99_ms cpu_us_per_request other_load_percent"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$scheme://127.0.0.1:$2/" >/dev/null
  local before after busy_before busy_after nginx_before nginx_after start end wrk_cpu
  before=$(cpu_ticks "$3")
  nginx_before=$(cpu_ticks "$nginx_worker")
  busy_before=$(busy_ticks)
  start=$(date +%s.%N)
  wrk_cpu=$( { TIMEFORMAT='%U %S'; time wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
    "$scheme://127.0.0.1:$2/" >"$work/$1.wrk"; } 2>&1 | tail -1)
  end=$(date +%s.%N)
  busy_after=$(busy_ticks)
  nginx_after=$(cpu_ticks "$nginx_worker")
  after=$(cpu_ticks "$3")
  python3 - "$work/$1.wrk" "$1" "$((after - before))" "$(getconf CLK_TCK)" \
    "$((busy_after - busy_before))" "$((nginx_after - nginx_before))" "$wrk_cpu" "$start" "$end" "$(nproc)" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
requests = int(re.search(r"(\d+) requests in", text).group(1))
ticks, hz = int(sys.argv[3]), int(sys.argv[4])
cpu_us = ticks / hz * 1e6 / max(requests, 1)
busy, nginx = int(sys.argv[5]), int(sys.argv[6])
wrk_user, wrk_system = (float(x) for x in sys.argv[7].split())
wall, cores = float(sys.argv[9]) - float(sys.argv[8]), int(sys.argv[10])
# CPU the rest of the machine used meanwhile, in percent of all cores.
other = max(0.0, busy / hz - ticks / hz - nginx / hz - wrk_user - wrk_system) / (wall * cores) * 100
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
value, unit = re.search(r"\s99%\s+([\d.]+)(us|ms|s)", text).groups()
p99_ms = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
socket_errors = re.search(r"Socket errors: (.*)", text)
if errors or socket_errors:
    print("warning:", sys.argv[2], (errors and errors.group(0)) or "", (socket_errors and socket_errors.group(0)) or "", file=sys.stderr)
print(f"{rps:.0f} {p99_ms:.2f} {cpu_us:.1f} {other:.0f}")
EOF
}

# Alternating rounds, medians: neighbours' load on this shared machine changes from minute to
# minute, and alternating spreads it over every configuration.
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
results="$work/results.txt"
: >"$results"
for round in $(seq "$ROUNDS"); do
  for threads in $PROXY_THREADS; do
    for side in switchyard haproxy; do
      name="$side-$threads"
      echo "$round $name $(run_wrk "$name" "${ports[$name]}" "${proxy_pids[$name]}")" | tee -a "$results" >&2
    done
  done
done
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"
haproxy_version="$(haproxy -v | awk 'NR == 1 {print $3}')"
nginx_version="$(nginx -v 2>&1 | sed 's/.*nginx\///')"
date="$(date -u +%Y-%m-%d)"

section="$work/section.md"
python3 - "$results" "$section" "$haproxy_version" "$nginx_version" "$date" "$load_before" "$load_after" \
  "$DURATION" "$ROUNDS" "$CONNECTIONS" "$THREADS" "$WARMUP" "$PROXY_THREADS" "$autogroup" <<'EOF'
import statistics, sys
from collections import defaultdict
(results, section, haproxy, nginx, date, load_before, load_after,
 duration, rounds, connections, threads, warmup, proxy_threads, autogroup) = sys.argv[1:]
runs = defaultdict(list)
for line in open(results):
    round_, name, rps, p99, cpu, other = line.split()
    runs[name].append((float(rps), float(p99), float(cpu), float(other)))
med = {name: tuple(statistics.median(run[i] for run in v) for i in range(4)) for name, v in runs.items()}
def best(side):
    return max(((name, m) for name, m in med.items() if name.startswith(side)), key=lambda x: x[1][0])
sy_name, (sy_rps, sy_p99, _, _) = best("switchyard")
ha_name, (ha_rps, ha_p99, _, _) = best("haproxy")
lines = [
    "## Proxy",
    "",
    f"`switchyard proxy` vs HAProxy {haproxy} (Debian), each with 1 and with 2 threads (`threads`,",
    f"`nbthread`), round robin over the same two nginx {nginx} backends (Debian, one worker process,",
    "`return 200`), keep-alive, X-Forwarded-For, HTTP checks every 2 s, retries 3 with redispatch.",
    f"wrk -t{threads} -c{connections} -d{duration} --latency (each after a {warmup} warm-up), {rounds} rounds",
    "alternating the four configurations, medians shown. One 2-core machine runs the proxies, the",
    f"backends, wrk and other sessions' builds (load average {load_before} before, {load_after} after; {date}).",
    f"The benchmark runs in a session (autogroup) of its own: `{autogroup}`.",
    "",
    "| proxy | threads | req/s (median) | p99 (median) | CPU µs per request (median) | other load (median) | rounds: req/s, p99 ms, CPU µs, other load % |",
    "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
]
for name in sorted(med):
    side, t = name.rsplit("-", 1)
    label = "switchyard proxy" if side == "switchyard" else f"HAProxy {haproxy}"
    rounds_text = "; ".join(f"{r:.0f}, {p:.2f}, {c:.1f}, {o:.0f}" for r, p, c, o in runs[name])
    lines.append(f"| {label} | {t} | {med[name][0]:.0f} | {med[name][1]:.2f} ms | {med[name][2]:.1f} | {med[name][3]:.0f} % | {rounds_text} |")
lines += [
    "",
    f"**Best of each: switchyard ({sy_name.rsplit('-', 1)[1]} threads) {sy_rps:.0f} req/s, p99 {sy_p99:.2f} ms; "
    f"HAProxy (nbthread {ha_name.rsplit('-', 1)[1]}) {ha_rps:.0f} req/s, p99 {ha_p99:.2f} ms: "
    f"ratio {sy_rps / ha_rps:.2f}× req/s, {sy_p99 / ha_p99:.2f}× p99** (target ≥ 1.0× req/s, p99 ≤ 1.0×).",
]
for t in proxy_threads.split():
    s, h = med.get(f"switchyard-{t}"), med.get(f"haproxy-{t}")
    if s and h:
        lines.append(f"With {t} thread(s) each: {s[0] / h[0]:.2f}× req/s, {s[1] / h[1]:.2f}× p99, "
                     f"{s[2] / h[2]:.2f}× the CPU per request.")
lines += [
    "",
    "CPU per request is each proxy's user plus system time (`/proc/PID/stat`) over its measured",
    "wrk run, divided by the requests wrk completed: what each would cost with the cores to itself.",
    "Other load is the CPU the rest of the machine used during the round (all busy time in",
    "`/proc/stat` less the proxy's, nginx's and wrk's), in percent of all cores: rounds where it is",
    "high are the ones whose p99 shows other sessions' time slices.",
    "",
    f"Command: `DURATION={duration} ROUNDS={rounds} CONNECTIONS={connections} scripts/bench-proxy.sh`.",
]
open(section, "w").write("\n".join(lines) + "\n")
EOF

python3 - "$section" <<'EOF'
import re, sys
from pathlib import Path
section = Path(sys.argv[1]).read_text()
path = Path("BENCHMARKS.md")
text = path.read_text() if path.exists() else "# Benchmarks\n"
# Only the generated part: hand-written "### " subsections after it stay.
pattern = re.compile(r"^## Proxy\n.*?(?=^## |^### |\Z)", re.S | re.M)
if pattern.search(text):
    text = pattern.sub(lambda _: section + "\n", text, count=1)
else:
    text = text.rstrip("\n") + "\n\n" + section
if "NO_WRITE" not in __import__("os").environ:
    path.write_text(text.rstrip("\n") + "\n")
EOF
cat "$section"
