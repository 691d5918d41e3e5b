#!/usr/bin/env bash
# DNS benchmark: `switchyard dns` (release build) vs Knot DNS (`knotd`) and BIND9 (`named`)
# serving the same zone on loopback, all measured by dnsperf with the same query file, the three
# alternating in one run (medians of the rounds). Prints a Markdown section for BENCHMARKS.md
# ("## DNS"). Not a test: nothing is asserted.
#
#   scripts/bench-dns.sh                 # builds target/release/switchyard first
#   SWITCHYARD_BIN=path/to/switchyard DNS_BENCH_SECONDS=20 scripts/bench-dns.sh
#
# Needs bind9 (named), knot (knotd) and dnsperf from Debian; installs them when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${DNS_BENCH_SECONDS:-15}
ROUNDS=${DNS_BENCH_ROUNDS:-3}
CLIENTS=${DNS_BENCH_CLIENTS:-4}
OUTSTANDING=${DNS_BENCH_OUTSTANDING:-200}
BIN=${SWITCHYARD_BIN:-target/release/switchyard}

for command in named knotd dnsperf; do
  if ! command -v "$command" >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends bind9 knot dnsperf >/dev/null
    break
  fi
done
if [ -z "${SWITCHYARD_BIN:-}" ]; then
  cargo build --release -p switchyard --locked >&2
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The zone: 50 hosts with A and AAAA, MX, TXT, CNAMEs. Same content for both servers.
{
  echo '$TTL 300'
  echo '@ IN SOA ns1.bench.example. hostmaster.bench.example. 1 3600 600 1209600 60'
  echo '@ IN NS ns1.bench.example.'
  echo 'ns1 IN A 192.0.2.53'
  echo '@ IN MX 10 mail.bench.example.'
  echo 'mail IN A 192.0.2.25'
  echo '@ IN TXT "v=spf1 mx -all"'
  for i in $(seq 1 50); do
    echo "host$i IN A 192.0.2.$i"
    echo "host$i IN AAAA 2001:db8::$i"
    echo "alias$i IN CNAME host$i"
  done
} > "$work/bench.example.zone"

{
  echo '[dns]'
  echo 'reload_interval_ms = 0'
  # named runs without rate-limit here, and dnsperf is one client: compare like with like.
  echo '[dns.rate_limit]'
  echo 'enabled = false'
  echo '[[dns.zones]]'
  echo 'origin = "bench.example."'
  echo 'ns = ["ns1"]'
  echo '[dns.zones.soa]'
  echo 'rname = "hostmaster.bench.example."'
  echo 'serial = 1'
  printf '[[dns.zones.records]]\nname = "ns1"\ntype = "A"\nvalues = ["192.0.2.53"]\n'
  printf '[[dns.zones.records]]\nname = "@"\ntype = "MX"\nvalues = ["10 mail"]\n'
  printf '[[dns.zones.records]]\nname = "mail"\ntype = "A"\nvalues = ["192.0.2.25"]\n'
  printf '[[dns.zones.records]]\nname = "@"\ntype = "TXT"\nvalues = ["v=spf1 mx -all"]\n'
  for i in $(seq 1 50); do
    printf '[[dns.zones.records]]\nname = "host%s"\ntype = "A"\nvalues = ["192.0.2.%s"]\n' "$i" "$i"
    printf '[[dns.zones.records]]\nname = "host%s"\ntype = "AAAA"\nvalues = ["2001:db8::%s"]\n' "$i" "$i"
    printf '[[dns.zones.records]]\nname = "alias%s"\ntype = "CNAME"\nvalues = ["host%s"]\n' "$i" "$i"
  done
} > "$work/dns.toml"

# Queries: mostly A/AAAA hits, some CNAME chases, MX/TXT, and 10% NXDOMAIN.
{
  for i in $(seq 1 50); do
    echo "host$i.bench.example A"
    echo "host$i.bench.example AAAA"
    echo "host$i.bench.example A"
    echo "alias$i.bench.example A"
    echo "bench.example MX"
    echo "bench.example TXT"
    echo "host$i.bench.example MX"
    echo "host$i.bench.example A"
    echo "host$i.bench.example AAAA"
    echo "missing$i.bench.example A"
  done
} > "$work/queries.txt"

named_port=$(free_port)
cat > "$work/named.conf" <<EOF
options {
  directory "$work";
  pid-file "$work/named.pid";
  session-keyfile "$work/session.key";
  listen-on port $named_port { 127.0.0.1; };
  listen-on-v6 { none; };
  recursion no;
  allow-transfer { none; };
  minimal-responses yes;
  querylog no;
};
controls { };
zone "bench.example" { type primary; file "$work/bench.example.zone"; };
EOF

knot_port=$(free_port)
mkdir -p "$work/knot"
cat > "$work/knot.conf" <<EOF
server:
    rundir: "$work/knot"
    listen: 127.0.0.1@$knot_port
log:
  - target: stderr
    any: warning
control:
    listen: "$work/knot/knot.sock"
database:
    storage: "$work/knot"
template:
  - id: default
    storage: "$work/knot"
zone:
  - domain: bench.example
    file: "$work/bench.example.zone"
EOF

dns_port=$(free_port)
admin_port=$(free_port)

wait_answering() {
  local port=$1
  for _ in $(seq 1 100); do
    if dig @127.0.0.1 -p "$port" +time=1 +tries=1 +short host1.bench.example A 2>/dev/null | grep -q 192.0.2.1; then
      return 0
    fi
    sleep 0.1
  done
  echo "server on port $port did not answer" >&2
  return 1
}

# CPU time (user + system, clock ticks) a process has used so far.
cpu_ticks() {
  awk '{print $14 + $15}' "/proc/$1/stat"
}

# Runs dnsperf against the server on `port` (process `pid`); prints its q/s, the queries lost
# and the server's CPU time per answered query in microseconds (robust to the neighbours' load,
# which moves q/s much more).
run_dnsperf() {
  local port=$1 pid=$2
  local before after
  before=$(cpu_ticks "$pid")
  dnsperf -s 127.0.0.1 -p "$port" -d "$work/queries.txt" -l "$SECONDS_PER_RUN" -c "$CLIENTS" -q "$OUTSTANDING" \
    > "$work/dnsperf.out" 2>&1
  after=$(cpu_ticks "$pid")
  local qps lost completed
  qps=$(awk '/Queries per second:/ {printf "%d", $4}' "$work/dnsperf.out")
  lost=$(awk '/Queries lost:/ {print $3}' "$work/dnsperf.out")
  completed=$(awk '/Queries completed:/ {print $3}' "$work/dnsperf.out")
  local us
  us=$(python3 -c "print(f'{($after - $before) / $(getconf CLK_TCK) * 1e6 / max($completed, 1):.1f}')")
  echo "$qps $lost $us"
}

named -g -c "$work/named.conf" > "$work/named.log" 2>&1 &
named_pid=$!
pids+=("$named_pid")
knotd -c "$work/knot.conf" > "$work/knot.log" 2>&1 &
knot_pid=$!
pids+=("$knot_pid")
SWITCHYARD_LOG=warn "$BIN" dns --config "$work/dns.toml" --listen "127.0.0.1:$dns_port" \
  --admin-listen "127.0.0.1:$admin_port" > "$work/switchyard.log" 2>&1 &
sy_pid=$!
pids+=("$sy_pid")
wait_answering "$named_port"
wait_answering "$knot_port"
wait_answering "$dns_port"

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
sy_all=(); knot_all=(); bind_all=(); sy_cpu=(); knot_cpu=(); bind_cpu=()
rows=""
for round in $(seq 1 "$ROUNDS"); do
  read -r sy_qps sy_lost sy_us < <(run_dnsperf "$dns_port" "$sy_pid")
  read -r knot_qps knot_lost knot_us < <(run_dnsperf "$knot_port" "$knot_pid")
  read -r bind_qps bind_lost bind_us < <(run_dnsperf "$named_port" "$named_pid")
  echo "round $round: switchyard $sy_qps ($sy_us us/query), knot $knot_qps ($knot_us), bind $bind_qps ($bind_us)" >&2
  ratios=$(python3 -c "print(f'{$sy_qps / $knot_qps:.2f}× / {$sy_qps / $bind_qps:.2f}×')")
  rows+="| $round | $sy_qps (lost $sy_lost) | $knot_qps (lost $knot_lost) | $bind_qps (lost $bind_lost) | $ratios | $sy_us / $knot_us / $bind_us |"$'\n'
  sy_all+=("$sy_qps"); knot_all+=("$knot_qps"); bind_all+=("$bind_qps")
  sy_cpu+=("$sy_us"); knot_cpu+=("$knot_us"); bind_cpu+=("$bind_us")
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
# Medians of the rounds (q/s, and CPU µs per query) and the ratios between the servers.
eval "$(python3 - "${sy_all[*]}" "${knot_all[*]}" "${bind_all[*]}" "${sy_cpu[*]}" "${knot_cpu[*]}" "${bind_cpu[*]}" <<'PY'
import statistics, sys
qps = [statistics.median(float(x) for x in arg.split()) for arg in sys.argv[1:4]]
cpu = [statistics.median(float(x) for x in arg.split()) for arg in sys.argv[4:7]]
print(f"sy_median={qps[0]:.0f} knot_median={qps[1]:.0f} bind_median={qps[2]:.0f}")
print(f"knot_ratio={qps[0] / qps[1]:.2f} bind_ratio={qps[0] / qps[2]:.2f}")
print(f"sy_cpu_median={cpu[0]:.1f} knot_cpu_median={cpu[1]:.1f} bind_cpu_median={cpu[2]:.1f}")
print(f"knot_cpu_ratio={cpu[1] / cpu[0]:.2f} bind_cpu_ratio={cpu[2] / cpu[0]:.2f}")
PY
)"
named_version=$(dpkg-query -W -f='${Version}' bind9 2>/dev/null || named -v | head -1)
knot_version=$(dpkg-query -W -f='${Version}' knot 2>/dev/null || knotd -V | head -1)
dnsperf_version=$(dpkg-query -W -f='${Version}' dnsperf 2>/dev/null || echo unknown)

cat <<EOF
## DNS

\`switchyard dns\` (release build) vs Knot DNS \`knotd\` (Debian knot $knot_version) and BIND9
\`named\` (Debian bind9 $named_version), the same 160-record zone on loopback, queried by dnsperf
(Debian $dnsperf_version) with the same query file (A, AAAA, CNAME chase, MX, TXT, NODATA, 10%
NXDOMAIN), $SECONDS_PER_RUN s per run, $CLIENTS clients, $OUTSTANDING queries outstanding, the three
servers alternating for $ROUNDS rounds. The servers and dnsperf share the machine's 2 cores with
other sessions' builds (load average $load_before before, $load_after after), so absolute
numbers are low and noisy; the ratios within a round hold better. switchyard serves UDP with one
blocking thread per core, each on a socket of its own (\`SO_REUSEPORT\`), taking up to 32 queued
queries per \`recvmmsg\` and answering them with one \`sendmmsg\`, and reuses the encoded answer of
a repeated question (per worker, until the zones or the health view change); Knot and named run
with their defaults (one UDP worker per core), response rate limiting off on all three.

| round | switchyard dns (q/s) | Knot (q/s) | BIND9 named (q/s) | switchyard ÷ Knot / ÷ BIND | server CPU µs per query: switchyard / Knot / BIND |
| --- | --- | --- | --- | --- | --- |
${rows}
"Lost" counts queries dnsperf never got an answer to: the kernel dropped them when a socket receive
buffer overflowed during a burst (\`netstat -su\`: receive buffer errors).

**Medians: switchyard $sy_median q/s, Knot $knot_median q/s, BIND9 $bind_median q/s: ${knot_ratio}× Knot
(target ≥ 1.25×), ${bind_ratio}× BIND (target ≥ 2×).**

**Server CPU per answered query (medians): switchyard $sy_cpu_median µs, Knot $knot_cpu_median µs,
BIND9 $bind_cpu_median µs: Knot spends ${knot_cpu_ratio}× and BIND ${bind_cpu_ratio}× switchyard's CPU per
query.** This is the capacity each server would have with the cores to itself (user plus system time
from \`/proc/PID/stat\` around each dnsperf run, divided by the queries answered); it moves much
less with the neighbours' load than q/s does.

Command: \`scripts/bench-dns.sh\` (DNS_BENCH_SECONDS=$SECONDS_PER_RUN DNS_BENCH_ROUNDS=$ROUNDS
DNS_BENCH_CLIENTS=$CLIENTS DNS_BENCH_OUTSTANDING=$OUTSTANDING), run on $(date -u +%Y-%m-%d).
EOF
