#!/usr/bin/env bash
# Benchmark (not a test): CPU time per request of `switchyard proxy` and HAProxy, each with T
# threads (default 2), measured with `perf stat -e task-clock -p PID` on the proxy process while
# wrk -t2 -c32 runs DURATION seconds against it; same nginx backends and proxy settings as
# scripts/bench-proxy.sh. CPU per request is robust to other load on a shared machine, where
# req/s and p99 are not. Prints one line per proxy and round.
#
#   BIN=target/release/switchyard ROUNDS=2 nice -n -15 scripts/bench-proxy-cpu.sh
set -euo pipefail
BIN="${BIN:?}"; ROUNDS="${ROUNDS:-2}"; DURATION="${DURATION:-10}"; T="${T:-2}"
work="$(mktemp -d)"; pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; exit 1; }
b1=$(free_port); b2=$(free_port); mkdir -p "$work/nginx"
cat >"$work/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $work/nginx; proxy_temp_path $work/nginx; fastcgi_temp_path $work/nginx; uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  keepalive_requests 1000000; keepalive_timeout 60s;
  server { listen 127.0.0.1:$b1; listen 127.0.0.1:$b2; location / { default_type text/plain; return 200 "ok\n"; } } }
EOF
nginx -c "$work/nginx.conf" -p "$work" >"$work/nginx.log" 2>&1 & pids+=($!)
wait_port $b1; wait_port $b2
sp=$(free_port); ap=$(free_port); hp=$(free_port)
cat >"$work/p.toml" <<EOF
[proxy]
listen = "127.0.0.1:$sp"
admin_listen = "127.0.0.1:$ap"
threads = $T
balance = "roundrobin"
retries = 3
redispatch = true
[proxy.check]
inter_ms = 2000
path = "/"
[[proxy.servers]]
name = "s1"
address = "127.0.0.1:$b1"
[[proxy.servers]]
name = "s2"
address = "127.0.0.1:$b2"
EOF
SWITCHYARD_LOG=warn "$BIN" proxy --config "$work/p.toml" >"$work/p.log" 2>&1 & spid=$!; pids+=($spid)
cat >"$work/h.cfg" <<EOF
global
  nbthread $T
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
  bind 127.0.0.1:$hp
  default_backend be
backend be
  balance roundrobin
  option httpchk GET /
  server s1 127.0.0.1:$b1 check inter 2000
  server s2 127.0.0.1:$b2 check inter 2000
EOF
haproxy -f "$work/h.cfg" -db >"$work/h.log" 2>&1 & hpid=$!; pids+=($hpid)
wait_port $sp; wait_port $hp
for round in $(seq $ROUNDS); do
  for side in switchyard haproxy; do
    if [ $side = switchyard ]; then port=$sp; pid=$spid; else port=$hp; pid=$hpid; fi
    wrk -t2 -c32 -d2s "http://127.0.0.1:$port/" >/dev/null
    perf stat -x, -e task-clock -p $pid -- sleep $DURATION 2>"$work/perf" &
    perfpid=$!
    wrk -t2 -c32 -d${DURATION}s --latency "http://127.0.0.1:$port/" >"$work/wrk"
    wait $perfpid || true
    python3 - "$work/perf" "$work/wrk" $side $round <<'EOF'
import re,sys
perf=open(sys.argv[1]).read(); wrk=open(sys.argv[2]).read()
ms=float([l for l in perf.splitlines() if 'task-clock' in l][0].split(',')[0])
reqs=int(re.search(r"(\d+) requests in",wrk).group(1)); rps=float(re.search(r"Requests/sec:\s+([\d.]+)",wrk).group(1))
p99=re.search(r"\s99%\s+(\S+)",wrk).group(1)
print(f"round {sys.argv[4]} {sys.argv[3]}: {ms*1000/reqs:.1f} us CPU/request, {rps:.0f} req/s, p99 {p99}")
EOF
  done
done
grep -i -E "error|panic" "$work/p.log" | head -5 || true
