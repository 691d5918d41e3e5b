#!/usr/bin/env bash
# Benchmark (not a test): `switchyard proxy` vs HAProxy (Debian) in front of the same two
# backends (`switchyard bench-ceiling`, a bare hyper server answering 200), measured with wrk at
# the same concurrency and duration, one after the other in one run. Writes the "Proxy" section
# of BENCHMARKS.md.
#
#   scripts/bench-proxy.sh                 # 3 interleaved rounds of 10 s per side, wrk -t2 -c32
#   DURATION=30s CONNECTIONS=64 scripts/bench-proxy.sh
#   SWITCHYARD_BIN=target/release/switchyard scripts/bench-proxy.sh   # skip the build
#
# Both proxies run 2 threads (tokio's default here; HAProxy `nbthread 2`), keep-alive to clients
# and to servers, X-Forwarded-For on, active HTTP checks every 2 s, retries 3 with redispatch.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-10s}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-2}"
WARMUP="${WARMUP:-3s}"
BIN="${SWITCHYARD_BIN:-}"
if [ -z "$BIN" ]; then
  cargo build --release -p switchyard >&2
  BIN=target/release/switchyard
fi
for command in haproxy wrk; do
  command -v "$command" >/dev/null || { echo "$command is missing: run scripts/install-test-deps.sh" >&2; exit 1; }
done

work="$(mktemp -d)"
pids=()
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

backend_ports=()
for i in 1 2; do
  port="$(free_port)"
  "$BIN" bench-ceiling --listen "127.0.0.1:$port" >"$work/backend$i.log" 2>&1 &
  pids+=($!)
  backend_ports+=("$port")
done
for port in "${backend_ports[@]}"; do wait_port "$port"; done

proxy_port="$(free_port)"
admin_port="$(free_port)"
cat >"$work/proxy.toml" <<EOF
[proxy]
listen = "127.0.0.1:$proxy_port"
admin_listen = "127.0.0.1:$admin_port"
balance = "roundrobin"
retries = 3
redispatch = true

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
SWITCHYARD_LOG=warn "$BIN" proxy --config "$work/proxy.toml" >"$work/proxy.log" 2>&1 &
pids+=($!)

haproxy_port="$(free_port)"
cat >"$work/haproxy.cfg" <<EOF
global
  nbthread 2
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
  bind 127.0.0.1:$haproxy_port
  default_backend be
backend be
  balance roundrobin
  option httpchk GET /
  server s1 127.0.0.1:${backend_ports[0]} check inter 2000
  server s2 127.0.0.1:${backend_ports[1]} check inter 2000
EOF
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
pids+=($!)
wait_port "$proxy_port"
wait_port "$haproxy_port"

run_wrk() { # name port -> "req/s p99_ms"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "http://127.0.0.1:$2/" >/dev/null
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:$2/" >"$work/$1.wrk"
  cat "$work/$1.wrk" >&2
  python3 - "$work/$1.wrk" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
value, unit = re.search(r"\s99%\s+([\d.]+)(us|ms|s)", text).groups()
p99_ms = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
socket_errors = re.search(r"Socket errors: (.*)", text)
if errors or socket_errors:
    print("warning:", (errors and errors.group(0)) or "", (socket_errors and socket_errors.group(0)) or "", file=sys.stderr)
print(f"{rps:.0f} {p99_ms:.2f}")
EOF
}

# Interleaved rounds, medians: neighbours' load on this shared machine changes from minute to
# minute, and alternating spreads it over both sides.
sy_all=(); ha_all=()
for round in $(seq "$ROUNDS"); do
  sy_all+=("$(run_wrk switchyard "$proxy_port")")
  ha_all+=("$(run_wrk haproxy "$haproxy_port")")
done
median() { python3 -c 'import statistics,sys; print(f"{statistics.median(float(x) for x in sys.argv[2:]):.{sys.argv[1]}f}")' "$@"; }
column() { local index="$1"; shift; for pair in "$@"; do echo "$pair" | awk -v i="$index" '{print $i}'; done; }
sy_rps="$(median 0 $(column 1 "${sy_all[@]}"))"; sy_p99="$(median 2 $(column 2 "${sy_all[@]}"))"
ha_rps="$(median 0 $(column 1 "${ha_all[@]}"))"; ha_p99="$(median 2 $(column 2 "${ha_all[@]}"))"
rounds_text="$(for i in $(seq 0 $((ROUNDS - 1))); do echo "${sy_all[$i]} | ${ha_all[$i]}"; done | awk '{printf "%s%s req/s %s ms vs %s req/s %s ms", (NR>1?"; ":""), $1, $2, $4, $5}')"
rps_ratio="$(python3 -c "print(f'{$sy_rps/$ha_rps:.2f}')")"
p99_ratio="$(python3 -c "print(f'{$sy_p99/$ha_p99:.2f}')")"
haproxy_version="$(haproxy -v | head -1 | awk '{print $3}')"
date="$(date -u +%Y-%m-%d)"

section="$work/section.md"
cat >"$section" <<EOF
## Proxy

\`switchyard proxy\` vs HAProxy $haproxy_version (Debian), both with 2 threads, round robin over the
same two backends (\`switchyard bench-ceiling\`: a bare hyper server answering 200), keep-alive,
X-Forwarded-For, HTTP checks every 2 s. wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency (each after a
$WARMUP warm-up), $ROUNDS rounds alternating the two proxies, medians shown; on a 2-core machine
shared with the load generator, the backends and other work ($date).

| proxy | req/s | p99 |
| --- | ---: | ---: |
| switchyard proxy | $sy_rps | $sy_p99 ms |
| HAProxy $haproxy_version | $ha_rps | $ha_p99 ms |
| ratio (switchyard / HAProxy) | **$rps_ratio×** | **$p99_ratio×** |

Rounds (switchyard vs HAProxy): $rounds_text.

Targets: ≥ 0.8× HAProxy's req/s, p99 ≤ 1.5×. Command: \`DURATION=$DURATION ROUNDS=$ROUNDS CONNECTIONS=$CONNECTIONS scripts/bench-proxy.sh\`.
EOF

python3 - "$section" <<'EOF'
import re, sys
from pathlib import Path
section = Path(sys.argv[1]).read_text()
path = Path("BENCHMARKS.md")
text = path.read_text() if path.exists() else "# Benchmarks\n"
pattern = re.compile(r"^## Proxy\n.*?(?=^## |\Z)", re.S | re.M)
if pattern.search(text):
    text = pattern.sub(lambda _: section + "\n", text, count=1)
else:
    text = text.rstrip("\n") + "\n\n" + section
path.write_text(text.rstrip("\n") + "\n")
EOF
cat "$section"
