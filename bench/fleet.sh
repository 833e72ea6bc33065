# The fleet scenario (issue 11), sourced by bench/run.sh: FLEET_COUNT certificates issued by one
# `certkeeper run` on the file backend, then by FLEET_NODES daemons sharing one PostgreSQL
# database, against the same pebble, in the same run. Reported: the wall time until every
# certificate is issued (installed on the node that ordered it) and until every node installed
# every certificate, the CPU time of all certkeeper processes, and the orders pebble saw.
#
# PostgreSQL comes from Debian's `postgresql` package: initdb and pg_ctl run as the `postgres`
# user with their own data and socket directories under the work directory, on a free loopback
# port (as tests/support/postgres.rs does), so this scenario needs root.
#
# HTTP-01 in the fleet: pebble validates on node 1's listener only; the other nodes' tokens reach
# it through the database (published by the node that orders, pushed with LISTEN/NOTIFY, looked up
# on a miss), as behind a load balancer that sends every request to one node.

FLEET_COUNT=${FLEET_COUNT:-1000}
FLEET_NODES=${FLEET_NODES:-3}
FLEET_TIMEOUT=${FLEET_TIMEOUT:-1800}
# Orders in flight at once across the whole fleet, split over the nodes (max_concurrent each), so
# the CA sees the same load from one node and from the fleet. pebble 2.4.0's in-memory store
# deadlocks under many more concurrent orders (its POST handlers stop answering).
FLEET_CONCURRENCY=${FLEET_CONCURRENCY:-16}
FLEET=""
FLEET_SHARED=""
PG_DIR=""
PG_PORT=""
PG_BIN=""

start_postgres() {
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -x "$PG_BIN/initdb" ] || { log "fleet: no PostgreSQL (apt-get install postgresql)"; return 1; }
    [ "$(id -u)" = 0 ] || { log "fleet: needs root (initdb runs as the postgres user)"; return 1; }
    # Its own directory: the postgres user cannot enter the (0700) work directory.
    PG_DIR=$(mktemp -d /tmp/certkeeper-bench-pg.XXXXXX)
    PG_PORT=$(free_port)
    mkdir -p "$PG_DIR/data" "$PG_DIR/sock"
    echo "postgres-bench-pw" >"$PG_DIR/pwfile"
    chown -R postgres:postgres "$PG_DIR"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth-local=trust \
        --auth-host=scram-sha-256 --pwfile "$PG_DIR/pwfile" -E UTF8 --locale=C --no-sync \
        >"$PG_DIR/initdb.log" 2>&1 || { log "fleet: initdb failed (see $PG_DIR/initdb.log)"; return 1; }
    # Durable like a production server (fsync on): the fleet pays for its commits here.
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 30 \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR/sock" start >/dev/null \
        || { log "fleet: PostgreSQL did not start (see $PG_DIR/server.log)"; return 1; }
    pg_sql "CREATE ROLE certkeeper LOGIN PASSWORD 'bench-pw'" &&
        pg_sql "CREATE DATABASE certkeeper OWNER certkeeper"
}

stop_postgres() {
    [ -n "$PG_DIR" ] || return 0
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 30 stop >/dev/null 2>&1
    if [ "$KEEP" = 1 ]; then log "PostgreSQL directory kept: $PG_DIR"; else rm -rf "$PG_DIR"; fi
    PG_DIR=""
}

pg_sql() {
    runuser -u postgres -- "$PG_BIN/psql" -h "$PG_DIR/sock" -p "$PG_PORT" -U postgres -d postgres \
        -X -q -A -t -v ON_ERROR_STOP=1 -c "$1" >/dev/null
}

# Node $2 of $1 nodes in run directory $3 (node 0: the file backend).
fleet_config() {
    local nodes=$1 node=$2 dir=$3 i port n
    port=$([ "$node" -le 1 ] && echo "$HTTP_PORT" || free_port)
    {
        printf 'state_dir = "%s/state"\n\n[http01]\nlisten = ["127.0.0.1:%s"]\n\n' "$dir" "$port"
        n=$((nodes > 0 ? nodes : 1))
        printf '[daemon]\nmax_concurrent = %d\n\n' $(((FLEET_CONCURRENCY + n - 1) / n))
        if [ "$node" -ge 1 ]; then
            printf '[storage]\nbackend = "postgres"\nurl = "postgresql://certkeeper@127.0.0.1:%s/certkeeper"\n' "$PG_PORT"
            printf 'password_file = "%s"\nencryption_key_file = "%s"\nnode = "node%d"\n\n' \
                "$FLEET_SHARED/pg.pass" "$FLEET_SHARED/storage.key" "$node"
        fi
        printf '[issuer.pebble]\ndirectory = "%s"\nca_bundle = "%s"\n\n' "$DIRECTORY" "$CA_PEM"
        printf '[[issuer.pebble.solver]]\nhttp01 = { self_check = false }\n'
        for ((i = 1; i <= FLEET_COUNT; i++)); do
            printf '\n[certificate.c%d]\nissuer = "pebble"\ndomains = ["c%d.example.com"]\n' "$i" "$i"
            printf 'key = "ecdsa-p256"\noutput = { dir = "%s/out/c%d" }\n' "$dir" "$i"
        done
    } >"$dir/certkeeper.toml"
}

# Certificates installed in run directory $1.
installed_in() { find "$1/out" -maxdepth 2 -name fullchain.pem 2>/dev/null | wc -l; }

# Certificates installed on at least one of the nodes in directories $@.
issued_anywhere() {
    local d
    for d in "$@"; do find "$d/out" -maxdepth 2 -name fullchain.pem -printf '%h\n' 2>/dev/null; done |
        xargs -r -n1 basename | sort -u | wc -l
}

# One measured fleet: $1 nodes (0 = one daemon on the file backend). Appends a row to $FLEET.
measure_fleet() {
    local nodes=$1 label dirs=() pids=() d i t0 t_issued="" t_all="" n_any=0 n_all=0 cpu=0 orders status=FAILED
    local orders0
    label=$([ "$nodes" = 0 ] && echo "1 node, file backend" || echo "$nodes node(s), PostgreSQL")
    pick_http_port
    start_pebble
    orders0=$(grep -c 'Added order' "$WORK/pebble.log")
    if [ "$nodes" -ge 1 ]; then
        pg_sql "DROP DATABASE IF EXISTS certkeeper" && pg_sql "CREATE DATABASE certkeeper OWNER certkeeper" \
            || { log "fleet: cannot reset the database"; stop_pebble; return; }
    fi
    for ((i = (nodes == 0 ? 0 : 1); i <= nodes; i++)); do
        d=$WORK/runs/fleet-$nodes-node$i
        rm -rf "$d"
        mkdir -p "$d"
        fleet_config "$nodes" "$i" "$d"
        dirs+=("$d")
    done
    t0=$EPOCHREALTIME
    for d in "${dirs[@]}"; do
        "$CERTKEEPER_BIN" --config "$d/certkeeper.toml" --log warn run >"$d/out.log" 2>&1 &
        pids+=("$!")
        PIDS+=("$!")
    done
    for ((i = 0; i < FLEET_TIMEOUT * 5; i++)); do
        n_any=$(issued_anywhere "${dirs[@]}")
        [ -z "$t_issued" ] && [ "$n_any" -ge "$FLEET_COUNT" ] && t_issued=$EPOCHREALTIME
        n_all=$FLEET_COUNT
        for d in "${dirs[@]}"; do
            local n
            n=$(installed_in "$d")
            [ "$n" -lt "$n_all" ] && n_all=$n
        done
        if [ "$n_all" -ge "$FLEET_COUNT" ]; then
            t_all=$EPOCHREALTIME
            t_issued=${t_issued:-$t_all}
            break
        fi
        for d in "${pids[@]}"; do kill -0 "$d" 2>/dev/null || break 2; done
        sleep 0.2
    done
    for d in "${pids[@]}"; do
        kill -0 "$d" 2>/dev/null && cpu=$(awk -v a="$cpu" -v b="$(cpu_seconds "$d")" 'BEGIN { print a + b }')
    done
    orders=$(($(grep -c 'Added order' "$WORK/pebble.log") - orders0))
    [ -n "$t_all" ] && status=ok
    for d in "${pids[@]}"; do stop_pid "$d"; done
    stop_pebble
    [ "$status" = ok ] || log "fleet ($label) FAILED: $n_any issued, $n_all on every node; see ${dirs[0]}/out.log"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$status" \
        "$([ -n "$t_issued" ] && awk -v a="$t0" -v b="$t_issued" 'BEGIN { printf "%.1f", b - a }' || echo -)" \
        "$([ -n "$t_all" ] && awk -v a="$t0" -v b="$t_all" 'BEGIN { printf "%.1f", b - a }' || echo -)" \
        "$cpu" "$orders" >>"$FLEET"
    log "fleet ($label): $status, $n_any issued, $n_all on every node, $orders orders, ${cpu}s CPU"
}

measure_fleet_pair() {
    FLEET=$WORK/fleet.tsv
    : >"$FLEET"
    start_postgres || return 0
    FLEET_SHARED=$WORK/fleet-shared
    mkdir -p "$FLEET_SHARED"
    echo "bench-pw" >"$FLEET_SHARED/pg.pass"
    openssl rand -base64 32 >"$FLEET_SHARED/storage.key"
    chmod 600 "$FLEET_SHARED/pg.pass" "$FLEET_SHARED/storage.key"
    measure_fleet 0
    measure_fleet "$FLEET_NODES"
    stop_postgres
}

print_fleet() {
    [ -s "$FLEET" ] || return 0
    echo "| fleet, $FLEET_COUNT certificates | status | all issued (s) | on every node (s) | certkeeper CPU, all nodes (s) | orders seen by pebble |"
    echo "|---|---|---|---|---|---|"
    awk -F'\t' '{ printf "| %s | %s | %s | %s | %.1f | %s |\n", $1, $2, $3, $4, $5, $6 }' "$FLEET"
}
