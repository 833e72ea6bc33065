#!/usr/bin/env bash
# certkeeper benchmark (issue 6): certkeeper vs lego vs certbot against a local pebble with no
# validation sleeps. See BENCHMARKS.md for the method and the latest numbers.
#
# Usage:  bench/run.sh            (from anywhere; needs root or sudo for apt-get on a fresh machine)
#         bench/run.sh --report RESULTS.tsv [FLOORS.tsv]   (table from kept results, KEEP=1)
#
# Environment knobs (all optional):
#   N=5                  runs per small scenario (medians are taken over these)
#   N_BIG=1              runs of the 1000-certificate daemon pass
#   IDLE_SECONDS=60      how long the idle daemon (1000 certificates configured) is observed
#   BIG_COUNT=1000       certificates in the big daemon pass
#   BIG_TIMEOUT=1200     seconds to wait for all BIG_COUNT fullchain.pem files
#   MAX_CONCURRENT=16    certkeeper's [daemon] max_concurrent (orders at once)
#   BENCH_TMP=/tmp       where the work directory is made (e.g. a journalled ext4 mount)
#   RUN_TIMEOUT=300      seconds before one client run is killed and counted as FAILED
#   CLIENTS="certkeeper lego certbot"
#   SCENARIOS="one ten twenty big"    (also: scale, fleet, warm; see below)
#   SCALE_COUNTS="1000 10000"  scale scenario: certificates installed without a CA (bench/populate.rs),
#   SCALE_RUNS=5               then status, status --json NAME, a no-op renew, start to READY=1 and
#   SCALE_IDLE=10              SIGHUP to READY=1 timed SCALE_RUNS times each (medians); idle observed
#   POPULATE_BIN=path          SCALE_IDLE s; POPULATE_BIN: target/release/examples/bench_populate
#   FLEET_COUNT=1000           fleet scenario (bench/fleet.sh, needs root and postgresql): FLEET_COUNT
#   FLEET_NODES=3              certificates by one daemon on the file backend, then by FLEET_NODES
#   FLEET_TIMEOUT=1800         daemons sharing one PostgreSQL, same pebble, same run;
#   FLEET_CONCURRENCY=16       orders in flight across the fleet (split over the nodes)
#   WARM_COUNT=100             warm scenario (bench/warm.sh): WARM_COUNT certificates issued by each
#   WARM_PAR=10                client, then all renewed with the existing account (certkeeper renew
#                              --force, certbot renew --force-renewal, WARM_PAR lego renew at a time)
#   CERTKEEPER_BIN=path  use this binary and skip `cargo build --release`
#   BUILD=1              0 = do not build; then CERTKEEPER_BIN or target/release/certkeeper must exist
#   FLOOR=1              0 = skip measuring pebble's floor (bench/floor.py)
#   PEBBLE_WFE_NONCEREJECT=0  pebble's bad-nonce rate in percent (pebble's own default is 5-15)
#   HTTP_PORT=5002       fixed HTTP-01 port for every client; unset = a free port per run
#   KEEP=0               1 = keep the work directory (logs, configs, per-run time -v output)
#   OUT=path             also write the markdown result table there
#
# Every process the script starts is killed on exit. Loopback only.

set -uo pipefail

N=${N:-5}
N_BIG=${N_BIG:-1}
IDLE_SECONDS=${IDLE_SECONDS:-60}
BIG_COUNT=${BIG_COUNT:-1000}
BIG_TIMEOUT=${BIG_TIMEOUT:-1200}
MAX_CONCURRENT=${MAX_CONCURRENT:-16}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
CLIENTS=${CLIENTS-"certkeeper lego certbot"}
SCENARIOS=${SCENARIOS:-"one ten twenty big"}
SCALE_COUNTS=${SCALE_COUNTS:-"1000 10000"}
SCALE_RUNS=${SCALE_RUNS:-5}
SCALE_IDLE=${SCALE_IDLE:-10}
SCALE_N=1000
BUILD=${BUILD:-1}
FLOOR=${FLOOR:-1}
KEEP=${KEEP:-0}
OUT=${OUT:-}
export PEBBLE_WFE_NONCEREJECT=${PEBBLE_WFE_NONCEREJECT:-0}
export PEBBLE_VA_NOSLEEP=1
export PEBBLE_AUTHZREUSE=${PEBBLE_AUTHZREUSE:-0}

# The clients answer HTTP-01 on this port and pebble's httpPort matches it. Unset: a free port is
# picked for every run (other software on the machine, e.g. test suites, likes 5002 too).
FIXED_HTTP_PORT=${HTTP_PORT:-}
HTTP_PORT=${HTTP_PORT:-5002}

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)

# shellcheck source=bench/fleet.sh
. "$BENCH_DIR/fleet.sh"
# shellcheck source=bench/warm.sh
. "$BENCH_DIR/warm.sh"

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Process bookkeeping: everything we start is recorded and killed (by PID) on exit.
PIDS=()
WORK=""
cleanup() {
    local pid
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null
    done
    sleep 0.3
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
    done
    stop_postgres
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "$KEEP" = 1 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget_pid() {
    local keep=() p
    for p in "${PIDS[@]:-}"; do [ "$p" != "$1" ] && keep+=("$p"); done
    PIDS=("${keep[@]:-}")
}

# Stop one process we started: TERM, bounded wait, KILL.
stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || { forget_pid "$pid"; return 0; }
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    forget_pid "$pid"
}

# ---------------------------------------------------------------------------------------------
# Setup on a fresh Debian machine.
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_packages() {
    local missing=() pair cmd pkg
    for pair in pebble:pebble pebble-challtestsrv:pebble lego:lego certbot:certbot \
        /usr/bin/time:time openssl:openssl curl:curl timeout:coreutils /usr/bin/python3:python3; do
        cmd=${pair%%:*} pkg=${pair##*:}
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    # bench/floor.py needs Debian's python3-cryptography (certbot depends on it anyway).
    /usr/bin/python3 -c 'import cryptography' 2>/dev/null || missing+=(python3-cryptography)
    case " $SCENARIOS " in *" fleet "*)
        compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql) ;;
    esac
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing: ${missing[*]}"
        as_root apt-get update -qq || die "apt-get update failed; install ${missing[*]} by hand"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
            || die "apt-get install ${missing[*]} failed; install them by hand and rerun"
    fi
}

free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

make_tls() {
    local d=$WORK/tls
    mkdir -p "$d"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -keyout "$d/ca.key" -out "$d/ca.pem" -subj "/CN=certkeeper bench CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        2>/dev/null || die "openssl: cannot create the bench CA"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$d/server.key" -out "$d/server.csr" -subj "/CN=localhost" 2>/dev/null \
        || die "openssl: cannot create pebble's server key"
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$d/server.ext"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 30 \
        -extfile "$d/server.ext" -out "$d/server.pem" 2>/dev/null || die "openssl: cannot sign pebble's cert"
    CA_PEM=$d/ca.pem
}

start_challtestsrv() {
    DNS_PORT=$(free_port)
    local mgmt
    mgmt=$(free_port)
    pebble-challtestsrv -defaultIPv4 127.0.0.1 -defaultIPv6 "" -dns01 "127.0.0.1:$DNS_PORT" \
        -http01 "" -https01 "" -tlsalpn01 "" -management "127.0.0.1:$mgmt" \
        >"$WORK/challtestsrv.log" 2>&1 &
    PIDS+=($!)
    CTS_PID=$!
}

# A fresh pebble per measured run, so no client inherits a big in-memory database.
start_pebble() {
    local i
    PEBBLE_PORT=$(free_port)
    local mgmt
    mgmt=$(free_port)
    cat >"$WORK/pebble.json" <<EOF
{
  "pebble": {
    "listenAddress": "127.0.0.1:$PEBBLE_PORT",
    "managementListenAddress": "127.0.0.1:$mgmt",
    "certificate": "$WORK/tls/server.pem",
    "privateKey": "$WORK/tls/server.key",
    "httpPort": $HTTP_PORT,
    "tlsPort": 5001,
    "ocspResponderURL": "",
    "externalAccountBindingRequired": false
  }
}
EOF
    pebble -config "$WORK/pebble.json" -dnsserver "127.0.0.1:$DNS_PORT" >>"$WORK/pebble.log" 2>&1 &
    PEBBLE_PID=$!
    PIDS+=("$PEBBLE_PID")
    DIRECTORY="https://127.0.0.1:$PEBBLE_PORT/dir"
    for ((i = 0; i < 100; i++)); do
        curl -fsS --cacert "$CA_PEM" "$DIRECTORY" >/dev/null 2>&1 && return 0
        kill -0 "$PEBBLE_PID" 2>/dev/null || break
        sleep 0.1
    done
    tail -5 "$WORK/pebble.log" >&2
    die "pebble did not come up on $DIRECTORY (log above)"
}

stop_pebble() { stop_pid "$PEBBLE_PID"; }

pick_http_port() {
    local i
    if [ -z "$FIXED_HTTP_PORT" ]; then HTTP_PORT=$(free_port); return 0; fi
    for ((i = 0; i < 50; i++)); do port_busy "$HTTP_PORT" || return 0; sleep 0.1; done
    log "warning: 127.0.0.1:$HTTP_PORT still busy"
}

# ---------------------------------------------------------------------------------------------
# Scenarios: names per certificate. Output: one line per certificate, space-separated names.
scenario_certs() {
    local i
    case $1 in
    one) echo "c1.example.com" ;;
    ten) for i in $(seq 1 10); do printf 't%d.example.com ' "$i"; done; echo ;;
    twenty) for i in $(seq 1 20); do echo "c$i.example.com"; done ;;
    big) for i in $(seq 1 "$BIG_COUNT"); do echo "c$i.example.com"; done ;;
    scale) for i in $(seq 1 "$SCALE_N"); do echo "c$i.example.com"; done ;;
    warm) for i in $(seq 1 "$WARM_COUNT"); do echo "c$i.example.com"; done ;;
    esac
}

scenario_label() {
    case $1 in
    one) echo "1 cert, 1 name" ;;
    ten) echo "1 cert, 10 names" ;;
    twenty) echo "20 certs, 1 name each" ;;
    big) echo "$BIG_COUNT certs, one daemon pass" ;;
    esac
}

# certkeeper's config for a scenario, in run directory $2.
certkeeper_config() {
    local scenario=$1 dir=$2 n=0 line
    {
        printf 'state_dir = "%s/state"\n\n[http01]\nlisten = ["127.0.0.1:%s"]\n\n' "$dir" "$HTTP_PORT"
        printf '[daemon]\nmax_concurrent = %s\n\n' "$MAX_CONCURRENT"
        printf '[issuer.pebble]\ndirectory = "%s"\nca_bundle = "%s"\n\n' "$DIRECTORY" "$CA_PEM"
        printf '[[issuer.pebble.solver]]\nhttp01 = { self_check = false }\n'
        while read -r line; do
            n=$((n + 1))
            printf '\n[certificate.c%d]\nissuer = "pebble"\ndomains = [' "$n"
            printf '"%s", ' $line | sed 's/, $//'
            printf ']\nkey = "ecdsa-p256"\noutput = { dir = "%s/out/c%d" }\n' "$dir" "$n"
        done < <(scenario_certs "$scenario")
    } >"$dir/certkeeper.toml"
}

# Writes $dir/cmd.sh (the measured command) and $dir/check.sh (exit 0 when every cert exists).
prepare_client() {
    local client=$1 scenario=$2 dir=$3 line n=0 first
    : >"$dir/cmd.sh"
    : >"$dir/check.sh"
    case $client in
    certkeeper)
        certkeeper_config "$scenario" "$dir"
        echo "exec '$CERTKEEPER_BIN' --config '$dir/certkeeper.toml' --log warn renew" >"$dir/cmd.sh"
        while read -r line; do
            n=$((n + 1))
            echo "test -s '$dir/out/c$n/fullchain.pem' || exit 1" >>"$dir/check.sh"
        done < <(scenario_certs "$scenario")
        ;;
    lego)
        # One lego process per certificate, one --path (account registered by the first).
        echo "set -e; export LEGO_CA_CERTIFICATES='$CA_PEM'" >"$dir/cmd.sh"
        while read -r line; do
            first=${line%% *}
            printf "lego --accept-tos --server '%s' --email bench@example.com --path '%s/lego' --key-type ec256 --http --http.port 127.0.0.1:%s" \
                "$DIRECTORY" "$dir" "$HTTP_PORT" >>"$dir/cmd.sh"
            printf ' --domains %s' $line >>"$dir/cmd.sh"
            echo ' run' >>"$dir/cmd.sh"
            echo "test -s '$dir/lego/certificates/$first.crt' || exit 1" >>"$dir/check.sh"
        done < <(scenario_certs "$scenario")
        ;;
    certbot)
        echo "set -e; export REQUESTS_CA_BUNDLE='$CA_PEM'" >"$dir/cmd.sh"
        while read -r line; do
            first=${line%% *}
            printf "certbot certonly --standalone --non-interactive --agree-tos --register-unsafely-without-email --server '%s' --config-dir '%s/cb/config' --work-dir '%s/cb/work' --logs-dir '%s/cb/logs' --http-01-port %s --http-01-address 127.0.0.1 --no-random-sleep-on-renew --key-type ecdsa --elliptic-curve secp256r1 --quiet" \
                "$DIRECTORY" "$dir" "$dir" "$dir" "$HTTP_PORT" >>"$dir/cmd.sh"
            printf ' -d %s' $line >>"$dir/cmd.sh"
            echo >>"$dir/cmd.sh"
            echo "test -s '$dir/cb/config/live/$first/fullchain.pem' || exit 1" >>"$dir/check.sh"
        done < <(scenario_certs "$scenario")
        ;;
    esac
}

# Results: one TSV line per run: client scenario run status wall_s peak_rss_kib extra
RESULTS=""
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; }

# One measured run of a small scenario (fresh pebble, fresh state dir, fresh process).
measure_run() {
    local client=$1 scenario=$2 run=$3 dir t0 t1 rc wall rss status pid
    dir=$WORK/runs/$client-$scenario-$run
    rm -rf "$dir"
    mkdir -p "$dir"
    pick_http_port
    start_pebble
    prepare_client "$client" "$scenario" "$dir"
    t0=$EPOCHREALTIME
    # In the background so a signal to the script is handled at once; timeout leads its own process
    # group and takes the client down with it when cleanup() kills it.
    timeout -k 5 "$RUN_TIMEOUT" /usr/bin/time -v -o "$dir/time.txt" bash "$dir/cmd.sh" >"$dir/out.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait "$pid"
    rc=$?
    forget_pid "$pid"
    t1=$EPOCHREALTIME
    stop_pebble
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    rss=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$dir/time.txt" 2>/dev/null)
    if [ "$rc" = 0 ] && bash "$dir/check.sh"; then
        status=ok
    else
        status=FAILED
        log "$client $scenario run $run FAILED (exit $rc); last lines of $dir/out.log:"
        tail -3 "$dir/out.log" | sed 's/^/    /' >&2
    fi
    log "$client $scenario run $run: $status ${wall}s peak RSS ${rss:-?} KiB"
    record "$client" "$scenario" "$run" "$status" "$wall" "${rss:-0}" "-"
}

# Sum of utime+stime (seconds) of a process, all threads.
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"; }
status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
# Context switches summed over every thread: voluntary (wakeups after sleeping) and involuntary.
ctxt_switches() {
    cat /proc/"$1"/task/*/status 2>/dev/null | awk -v k="$2:" '$1 == k { s += $2 } END { print s + 0 }'
}

# The big scenario: `certkeeper run` until all fullchain.pem exist, then idle for IDLE_SECONDS.
# The CPU of the pass (utime+stime from /proc) is counted for certkeeper, pebble and
# pebble-challtestsrv (pebble's DNS) from the start of the daemon to the last fullchain.pem.
measure_big() {
    local run=$1 dir pid t0 t1 n=0 status=FAILED wall="" rss hwm cpu0 cpu1 vol0 vol1 inv0 inv1 extra i
    local peb0 peb1 cts0 cts1 ck1 pass_hwm pass
    dir=$WORK/runs/certkeeper-big-$run
    rm -rf "$dir"
    mkdir -p "$dir"
    pick_http_port
    start_pebble
    prepare_client certkeeper big "$dir"
    peb0=$(cpu_seconds "$PEBBLE_PID")
    cts0=$(cpu_seconds "$CTS_PID")
    t0=$EPOCHREALTIME
    "$CERTKEEPER_BIN" --config "$dir/certkeeper.toml" --log warn run >"$dir/out.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    for ((i = 0; i < BIG_TIMEOUT * 5; i++)); do
        n=$(find "$dir/out" -maxdepth 2 -name fullchain.pem 2>/dev/null | wc -l)
        [ "$n" -ge "$BIG_COUNT" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    t1=$EPOCHREALTIME
    if [ "$n" -ge "$BIG_COUNT" ] && kill -0 "$pid" 2>/dev/null; then
        status=ok
        wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
        ck1=$(cpu_seconds "$pid")
        peb1=$(cpu_seconds "$PEBBLE_PID")
        cts1=$(cpu_seconds "$CTS_PID")
        pass_hwm=$(status_kib "$pid" VmHWM)
        pass=$(awk -v c="$ck1" -v p0="$peb0" -v p1="$peb1" -v s0="$cts0" -v s1="$cts1" -v n="$BIG_COUNT" \
            -v h="$pass_hwm" -v l="$(cut -d' ' -f1 /proc/loadavg)" \
            'BEGIN { p = p1 - p0; printf "pass_cpu_s=%.2f (%.1f ms/cert) pebble_cpu_s=%.2f certkeeper/pebble=%.2f challtestsrv_cpu_s=%.2f pass_hwm_kib=%d load1=%s", c, 1000 * c / n, p, (p > 0 ? c / p : 0), s1 - s0, h, l }')
        log "certkeeper big run $run: $BIG_COUNT certificates in ${wall}s, $pass; idling ${IDLE_SECONDS}s"
        stop_pebble # the idle daemon must not need the CA
        sleep 2     # let the last writes and hooks settle before the idle window
        rss=$(status_kib "$pid" VmRSS)
        cpu0=$(cpu_seconds "$pid")
        vol0=$(ctxt_switches "$pid" voluntary_ctxt_switches)
        inv0=$(ctxt_switches "$pid" nonvoluntary_ctxt_switches)
        sleep "$IDLE_SECONDS"
        if kill -0 "$pid" 2>/dev/null; then
            cpu1=$(cpu_seconds "$pid")
            vol1=$(ctxt_switches "$pid" voluntary_ctxt_switches)
            inv1=$(ctxt_switches "$pid" nonvoluntary_ctxt_switches)
            hwm=$(status_kib "$pid" VmHWM)
            extra=$(awk -v r0="$rss" -v r1="$(status_kib "$pid" VmRSS)" -v c0="$cpu0" -v c1="$cpu1" \
                -v v0="$vol0" -v v1="$vol1" -v i0="$inv0" -v i1="$inv1" -v s="$IDLE_SECONDS" -v pass="$pass" \
                'BEGIN { printf "%s idle_rss_kib=%d..%d idle_cpu_s=%.3f idle_cpu_pct=%.3f wakeups_per_s=%.2f invol_per_s=%.2f", pass, r0, r1, c1 - c0, 100 * (c1 - c0) / s, (v1 - v0) / s, (i1 - i0) / s }')
        else
            status=FAILED
            log "certkeeper exited during the idle window; see $dir/out.log"
        fi
        stop_pid "$pid"
    else
        log "certkeeper big run $run FAILED: $n of $BIG_COUNT certificates; last lines of $dir/out.log:"
        tail -3 "$dir/out.log" | sed 's/^/    /' >&2
        stop_pid "$pid"
        stop_pebble
    fi
    record certkeeper big "$run" "$status" "${wall:-0}" "${hwm:-0}" "${extra:--}"
}

# ---------------------------------------------------------------------------------------------
# The scale scenario (issue 14): N certificates installed and settled without a CA, then the
# read-only costs. Results go to $SCALE (count, metric, median wall s, median CPU s, extra).
SCALE=""
POPULATE_BIN=""

# Receives sd_notify datagrams on $1 and prints "<unix time> <message>" per message.
notify_listener() {
    /usr/bin/python3 -u -c '
import os, socket, sys, time
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
while True:
    msg = s.recv(4096).decode(errors="replace").strip().replace("\n", " ")
    print("%.6f %s" % (time.time(), msg), flush=True)
' "$1"
}

# Wait until file $1 has more than $2 lines containing READY=1; print the time of that line.
wait_ready() {
    local i line
    for ((i = 0; i < 3000; i++)); do
        line=$(grep 'READY=1' "$1" 2>/dev/null | sed -n "$(($2 + 1))p")
        [ -n "$line" ] && { echo "${line%% *}"; return 0; }
        sleep 0.02
    done
    return 1
}

# Run a command SCALE_RUNS times; record the medians of wall time and CPU (user+sys) as METRIC.
scale_time() {
    local count=$1 metric=$2 dir=$3 r t0 t1 walls=() cpus=() rc
    shift 3
    for ((r = 1; r <= SCALE_RUNS; r++)); do
        t0=$EPOCHREALTIME
        /usr/bin/time -f '%U %S %M' -o "$dir/time-$metric.txt" "$@" >"$dir/$metric.out" 2>&1
        rc=$?
        t1=$EPOCHREALTIME
        if [ "$rc" != 0 ]; then
            log "scale $count: $metric FAILED (exit $rc); last lines:"
            tail -3 "$dir/$metric.out" | sed 's/^/    /' >&2
            printf '%s\t%s\tFAILED\t-\t-\n' "$count" "$metric" >>"$SCALE"
            return
        fi
        walls+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')")
        cpus+=("$(awk '{ printf "%.4f", $1 + $2 }' "$dir/time-$metric.txt")")
    done
    printf '%s\t%s\t%s\t%s\t%s\n' "$count" "$metric" "$(printf '%s\n' "${walls[@]}" | median)" \
        "$(printf '%s\n' "${cpus[@]}" | median)" "maxrss_kib=$(awk '{ print $3 }' "$dir/time-$metric.txt")" >>"$SCALE"
    log "scale $count: $metric median $(printf '%s\n' "${walls[@]}" | median)s"
}

measure_scale() {
    local count=$1 dir t0 t1 pid npid ready n r walls=() cpu0 cpu1 vol0 vol1 rss
    dir=$WORK/runs/certkeeper-scale-$count
    rm -rf "$dir"
    mkdir -p "$dir"
    SCALE_N=$count
    HTTP_PORT=$(free_port)
    # Nothing is due, so no CA is asked; the directory URL only has to be well-formed.
    DIRECTORY="https://127.0.0.1:9/dir"
    certkeeper_config scale "$dir"
    t0=$EPOCHREALTIME
    if ! "$POPULATE_BIN" "$dir/certkeeper.toml" 2>"$dir/populate.log"; then
        log "scale $count: populating FAILED:"; tail -3 "$dir/populate.log" >&2; return
    fi
    sync
    log "scale $count: $(tail -1 "$dir/populate.log") ($(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')s with the config load)"
    local cfg=$dir/certkeeper.toml
    scale_time "$count" status "$dir" "$CERTKEEPER_BIN" --config "$cfg" --log warn status
    scale_time "$count" status-json-one "$dir" "$CERTKEEPER_BIN" --config "$cfg" --log warn status --json "c$((count / 2))"
    scale_time "$count" renew-noop "$dir" "$CERTKEEPER_BIN" --config "$cfg" --log warn renew

    # The daemon: exec to READY=1, idle, then SIGHUP to the next READY=1, SCALE_RUNS times.
    notify_listener "$dir/notify.sock" >"$dir/notify.log" 2>&1 &
    npid=$!
    PIDS+=("$npid")
    for ((r = 0; r < 100; r++)); do [ -S "$dir/notify.sock" ] && break; sleep 0.02; done
    t0=$EPOCHREALTIME
    NOTIFY_SOCKET=$dir/notify.sock "$CERTKEEPER_BIN" --config "$cfg" --log warn run >"$dir/run.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    if ! ready=$(wait_ready "$dir/notify.log" 0); then
        log "scale $count: the daemon sent no READY=1; last lines:"; tail -3 "$dir/run.log" >&2
        stop_pid "$pid"; stop_pid "$npid"; return
    fi
    printf '%s\tstart-ready\t%s\t-\t-\n' "$count" "$(awk -v a="$t0" -v b="$ready" 'BEGIN { printf "%.4f", b - a }')" >>"$SCALE"
    sleep 2
    rss=$(status_kib "$pid" VmRSS)
    cpu0=$(cpu_seconds "$pid")
    vol0=$(ctxt_switches "$pid" voluntary_ctxt_switches)
    sleep "$SCALE_IDLE"
    cpu1=$(cpu_seconds "$pid")
    vol1=$(ctxt_switches "$pid" voluntary_ctxt_switches)
    printf '%s\tidle\t-\t%s\tidle_rss_kib=%s..%s wakeups_per_s=%s hwm_kib=%s\n' "$count" \
        "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.3f", b - a }')" "$rss" "$(status_kib "$pid" VmRSS)" \
        "$(awk -v a="$vol0" -v b="$vol1" -v s="$SCALE_IDLE" 'BEGIN { printf "%.2f", (b - a) / s }')" \
        "$(status_kib "$pid" VmHWM)" >>"$SCALE"
    for ((r = 1; r <= SCALE_RUNS; r++)); do
        n=$(grep -c 'READY=1' "$dir/notify.log")
        t0=$EPOCHREALTIME
        kill -HUP "$pid"
        if ! ready=$(wait_ready "$dir/notify.log" "$n"); then log "scale $count: no READY=1 after SIGHUP"; break; fi
        walls+=("$(awk -v a="$t0" -v b="$ready" 'BEGIN { printf "%.4f", b - a }')")
        sleep 0.5
    done
    [ ${#walls[@]} -gt 0 ] && printf '%s\tsighup-ready\t%s\t-\t-\n' "$count" "$(printf '%s\n' "${walls[@]}" | median)" >>"$SCALE"
    log "scale $count: daemon measured, idle RSS ${rss} KiB"
    stop_pid "$pid"
    stop_pid "$npid"
}

print_scale() {
    local count metric
    echo "| certificates | status (s) | status --json NAME (s) | no-op renew (s) | start to READY=1 (s) | SIGHUP to READY=1 (s) | status CPU (s) | no-op renew CPU (s) | idle daemon RSS (MiB) | idle CPU (s), wakeups/s |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    for count in $SCALE_COUNTS; do
        awk -F'\t' -v n="$count" '
            $1 == n { wall[$2] = $3; cpu[$2] = $4; extra[$2] = $5 }
            END {
                split(extra["idle"], e, " "); rss = e[1]; sub(/.*\.\./, "", rss); w = e[2]; sub(/.*=/, "", w)
                printf "| %s | %s | %s | %s | %s | %s | %s | %s | %.1f | %s, %s |\n", n, wall["status"], wall["status-json-one"],
                    wall["renew-noop"], wall["start-ready"], wall["sighup-ready"], cpu["status"], cpu["renew-noop"],
                    rss / 1024, cpu["idle"], w
            }' "$SCALE"
    done
}

# ---------------------------------------------------------------------------------------------
# Report.
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print ""; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# cell CLIENT SCENARIO FIELD -> median of FIELD over ok runs, or FAILED / "-" (not run)
cell() {
    local total ok
    total=$(awk -F'\t' -v c="$1" -v s="$2" '$1 == c && $2 == s' "$RESULTS" | wc -l)
    ok=$(awk -F'\t' -v c="$1" -v s="$2" '$1 == c && $2 == s && $4 == "ok"' "$RESULTS" | wc -l)
    if [ "$total" = 0 ]; then echo "-"; return; fi
    if [ "$ok" -lt "$total" ]; then echo "FAILED"; return; fi
    awk -F'\t' -v c="$1" -v s="$2" -v f="$3" '$1 == c && $2 == s && $4 == "ok" { print $f }' "$RESULTS" | median
}

ratio() {
    case "$1$2" in *FAILED* | *-* | "") echo "-"; return ;; esac
    [ -z "$1" ] || [ -z "$2" ] && { echo "-"; return; }
    awk -v a="$1" -v b="$2" 'BEGIN { if (b <= 0) print "-"; else if (a / b >= 10) printf "%.0f", a / b; else printf "%.2f", a / b }'
}

mib() { case $1 in FAILED | - | "") echo "$1" ;; *) awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }' ;; esac; }

print_table() {
    local s c floor label row w wc hdr sep
    hdr="| scenario | pebble floor (s) |"
    sep="|---|---|"
    for c in $CLIENTS; do
        hdr+=" $c wall (s) | $c peak RSS (MiB) | $c / floor |"
        sep+="---|---|---|"
    done
    case " $CLIENTS " in *" certkeeper "*)
        for c in $CLIENTS; do
            [ "$c" = certkeeper ] && continue
            hdr+=" certkeeper / $c |"
            sep+="---|"
        done ;;
    esac
    echo "$hdr"
    echo "$sep"
    for s in $SCENARIOS; do
        case $s in scale | fleet | warm) continue ;; esac
        label=$(scenario_label "$s")
        floor=$(floor_of "$s")
        row="| $label | ${floor:--} |"
        for c in $CLIENTS; do
            w=$(cell "$c" "$s" 5)
            row+=" $w | $(mib "$(cell "$c" "$s" 6)") | $(ratio "$w" "$floor") |"
        done
        case " $CLIENTS " in *" certkeeper "*)
            wc=$(cell certkeeper "$s" 5)
            for c in $CLIENTS; do
                [ "$c" = certkeeper ] && continue
                row+=" $(ratio "$wc" "$(cell "$c" "$s" 5)") |"
            done ;;
        esac
        echo "$row"
    done
    if grep -q $'^certkeeper\tbig\t.*\tok\t' "$RESULTS" 2>/dev/null; then
        echo
        echo "Idle daemon, $BIG_COUNT certificates configured, observed ${IDLE_SECONDS}s (per run):"
        awk -F'\t' '$1 == "certkeeper" && $2 == "big" && $4 == "ok" { print "- run " $3 ": " $7 }' "$RESULTS"
    fi
}

# ---------------------------------------------------------------------------------------------
# pebble's floor per scenario (bench/floor.py; see BENCHMARKS.md for the method).
FLOORS=""
floor_of() { [ -n "$FLOORS" ] && awk -F'\t' -v s="$1" '$1 == s { print $2 }' "$FLOORS"; }

measure_floor() {
    local s certs t vals
    FLOORS=$WORK/floors.tsv
    : >"$FLOORS"
    for s in $SCENARIOS; do
        case $s in big | scale | fleet | warm) continue ;; esac
        vals=()
        for ((r = 1; r <= N; r++)); do
            pick_http_port
            start_pebble
            certs=$(scenario_certs "$s" | sed "s/ *$//; s/ /,/g" | paste -sd" " -)
            t=$(/usr/bin/python3 "$BENCH_DIR/floor.py" --directory "$DIRECTORY" --ca "$CA_PEM" \
                --port "$HTTP_PORT" --certs "$certs" 2>>"$WORK/floor.log")
            stop_pebble
            if [ -n "$t" ]; then vals+=("$t"); else log "floor $s run $r failed; see $WORK/floor.log"; fi
        done
        if [ ${#vals[@]} -gt 0 ]; then
            printf '%s\t%s\n' "$s" "$(printf '%s\n' "${vals[@]}" | median)" >>"$FLOORS"
            log "pebble floor $s: $(floor_of "$s")s (median of ${#vals[@]})"
        fi
    done
}

machine_info() {
    echo "- machine: $(nproc) CPUs, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r)"
    echo "- pebble $(dpkg-query -W -f '${Version}' pebble 2>/dev/null), lego $(dpkg-query -W -f '${Version}' lego 2>/dev/null), certbot $(certbot --version 2>&1 | awk '{ print $2 }'), certkeeper $( [ -x "${CERTKEEPER_BIN:-}" ] && "$CERTKEEPER_BIN" --version 2>/dev/null | awk '{ print $2 }' || echo 'not built')"
    echo "- N=$N (small scenarios), N_BIG=$N_BIG, IDLE_SECONDS=$IDLE_SECONDS, PEBBLE_VA_NOSLEEP=1, PEBBLE_WFE_NONCEREJECT=$PEBBLE_WFE_NONCEREJECT, PEBBLE_AUTHZREUSE=$PEBBLE_AUTHZREUSE"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
}

# ---------------------------------------------------------------------------------------------
main() {
    if [ "${1:-}" = --report ]; then
        # Re-print the table from saved results (KEEP=1 leaves results.tsv and floors.tsv in the work
        # directory); several runs' results.tsv may be concatenated first.
        RESULTS=${2:?usage: run.sh --report RESULTS.tsv [FLOORS.tsv]}
        FLOORS=${3:-}
        print_table
        return 0
    fi
    ensure_packages
    WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/certkeeper-bench.XXXXXX")
    RESULTS=$WORK/results.tsv
    : >"$RESULTS"
    log "work directory: $WORK"

    if [ -n "$FIXED_HTTP_PORT" ] && port_busy "$HTTP_PORT"; then
        die "127.0.0.1:$HTTP_PORT is in use; the clients need it for HTTP-01 (unset HTTP_PORT to pick free ports)"
    fi

    local want_certkeeper=0
    case " $CLIENTS " in *" certkeeper "*) want_certkeeper=1 ;; esac
    if [ "$want_certkeeper" = 1 ] && [ -z "${CERTKEEPER_BIN:-}" ]; then
        CERTKEEPER_BIN=$REPO_DIR/target/release/certkeeper
        if [ "$BUILD" = 1 ]; then
            log "building certkeeper (cargo build --release)"
            (cd "$REPO_DIR" && cargo build --release --bin certkeeper) >"$WORK/build.log" 2>&1 \
                || log "certkeeper build FAILED (see $WORK/build.log; rerun with KEEP=1); its rows will say FAILED"
        fi
    fi
    case " $SCENARIOS " in *" scale "*)
        POPULATE_BIN=${POPULATE_BIN:-$REPO_DIR/target/release/examples/bench_populate}
        if [ "$BUILD" = 1 ]; then
            (cd "$REPO_DIR" && cargo build --release --example bench_populate) >>"$WORK/build.log" 2>&1 \
                || log "bench_populate build FAILED (see $WORK/build.log)"
        fi ;;
    esac
    if [ "$want_certkeeper" = 1 ] && [ ! -x "${CERTKEEPER_BIN:-}" ]; then
        log "no certkeeper binary at ${CERTKEEPER_BIN:-?}; its scenarios will say FAILED"
        CERTKEEPER_BIN=/bin/false
    fi

    make_tls
    start_challtestsrv

    [ "$FLOOR" = 1 ] && measure_floor

    local r s c
    for s in $SCENARIOS; do
        case $s in big | scale | fleet | warm) continue ;; esac
        for ((r = 1; r <= N; r++)); do
            # Interleave clients so slow drift of the machine hits all of them alike.
            for c in $CLIENTS; do measure_run "$c" "$s" "$r"; done
        done
    done
    case " $SCENARIOS " in *" scale "*)
        if [ "$want_certkeeper" = 1 ]; then
            SCALE=$WORK/scale.tsv
            : >"$SCALE"
            for c in $SCALE_COUNTS; do measure_scale "$c"; done
        fi ;;
    esac
    case " $SCENARIOS " in *" big "*)
        if [ "$want_certkeeper" = 1 ]; then
            for ((r = 1; r <= N_BIG; r++)); do measure_big "$r"; done
        fi ;;
    esac

    case " $SCENARIOS " in *" fleet "*)
        [ "$want_certkeeper" = 1 ] && measure_fleet_pair ;;
    esac
    case " $SCENARIOS " in *" warm "*) measure_warm ;; esac

    stop_pid "$CTS_PID"
    {
        echo
        machine_info
        # The table of the small scenarios and `big` (not printed for scale, fleet or warm alone).
        case " $SCENARIOS " in *" one "* | *" ten "* | *" twenty "* | *" big "*)
            echo
            print_table ;;
        esac
        if [ -n "$SCALE" ]; then
            echo
            echo "Scale: certificates installed without a CA (bench/populate.rs), medians of $SCALE_RUNS runs:"
            echo
            print_scale
        fi
        if [ -n "$FLEET" ]; then
            echo
            print_fleet
        fi
        if [ -n "$WARM" ]; then
            echo
            print_warm
        fi
    } | tee "${OUT:-/dev/null}"
    [ "$KEEP" = 1 ] && cp "$RESULTS" "$WORK/results-final.tsv"
}

main "$@"
