# The warm scenario (issue 14), sourced by bench/run.sh: WARM_COUNT certificates (one name each)
# are issued first by each client (not timed), then all of them are renewed with the account that
# already exists, against one pebble shared by every client, in one run:
#
#   certkeeper renew --force                      one process, max_concurrent = 16
#   certbot renew --force-renewal                 one process over its config dir
#   lego ... --domains cN renew --days 99999      one process per certificate (lego has no config
#                                                 of many certificates), WARM_PAR at a time
#
# Timed per client: wall of the renewal, CPU (user+sys of the process and its children, GNU time),
# peak RSS (the largest process), and pebble's CPU over the same interval (utime+stime from /proc).
# A row counts only when every certificate's file changed. lego and certbot answer HTTP-01 through
# a webroot served by a small Python server on the HTTP-01 port (its CPU is not counted), so
# several of their processes can share the port; certkeeper uses its own listener.
#
# Setup of certbot, to keep it short: one account is registered, the config dir is copied
# WARM_PAR times, WARM_PAR chains of `certbot certonly --webroot` run side by side (certbot locks its
# config dir), and their lineages are merged back into the one config dir (renewal confs rewritten
# to it), so the timed `certbot renew` sees WARM_COUNT lineages of one account, as if issued there.

WARM_COUNT=${WARM_COUNT:-100}
WARM_PAR=${WARM_PAR:-10}
WARM_TIMEOUT=${WARM_TIMEOUT:-1200}
WARM=""
WEBROOT_PID=""

# Checksums of the certificate files of client $1 in $2, one line per certificate.
warm_sums() {
    local client=$1 dir=$2 i f
    for ((i = 1; i <= WARM_COUNT; i++)); do
        case $client in
        certkeeper) f=$dir/out/c$i/fullchain.pem ;;
        certbot) f=$dir/cb/config/live/c$i.example.com/fullchain.pem ;;
        lego) f=$dir/lego/certificates/c$i.example.com.crt ;;
        esac
        if [ -s "$f" ]; then md5sum <"$f"; else echo "missing $i"; fi
    done
}

warm_lego() { # $1 = dir, $2 = name, then the lego command and its flags
    local dir=$1 name=$2
    shift 2
    LEGO_CA_CERTIFICATES=$CA_PEM lego --accept-tos --server "$DIRECTORY" --email bench@example.com \
        --path "$dir/lego" --key-type ec256 --http --http.webroot "$dir/webroot" --domains "$name" "$@"
}

warm_certbot() { # $1 = certbot's directory (config, work, logs), then its command and flags
    local cb=$1
    shift
    REQUESTS_CA_BUNDLE=$CA_PEM certbot "$@" --non-interactive --config-dir "$cb/config" \
        --work-dir "$cb/work" --logs-dir "$cb/logs" --no-random-sleep-on-renew --quiet
}

# certbot chain $2 of WARM_PAR in $1: certificates $2, $2 + WARM_PAR, ... in its copy cb$2.
warm_certbot_chain() {
    local dir=$1 k=$2 i
    for ((i = k; i <= WARM_COUNT; i += WARM_PAR)); do
        warm_certbot "$dir/cb$k" certonly --webroot -w "$dir/webroot" --server "$DIRECTORY" \
            --key-type ecdsa --elliptic-curve secp256r1 -d "c$i.example.com" || return 1
    done
}

start_webroot() {
    mkdir -p "$1/webroot"
    /usr/bin/python3 -m http.server "$HTTP_PORT" --bind 127.0.0.1 --directory "$1/webroot" \
        >"$1/webroot.log" 2>&1 &
    WEBROOT_PID=$!
    PIDS+=("$WEBROOT_PID")
    local i
    for ((i = 0; i < 50; i++)); do port_busy "$HTTP_PORT" && return 0; sleep 0.1; done
    log "warm: the webroot server did not come up"
}

# Issue WARM_COUNT certificates with client $1 in $2 (not timed); exit status 0 when all exist.
warm_setup() {
    local client=$1 dir=$2 i sub
    case $client in
    certkeeper)
        certkeeper_config warm "$dir"
        timeout "$WARM_TIMEOUT" "$CERTKEEPER_BIN" --config "$dir/certkeeper.toml" --log warn renew \
            >"$dir/setup.log" 2>&1
        ;;
    certbot)
        start_webroot "$dir"
        warm_certbot "$dir/cb" register --agree-tos --register-unsafely-without-email \
            --server "$DIRECTORY" >"$dir/setup.log" 2>&1
        local chains=()
        for ((i = 1; i <= WARM_PAR; i++)); do
            cp -a "$dir/cb" "$dir/cb$i"
            warm_certbot_chain "$dir" "$i" >>"$dir/setup.log" 2>&1 &
            chains+=($!)
        done
        PIDS+=("${chains[@]}")
        for i in "${chains[@]}"; do wait "$i"; forget_pid "$i"; done
        for ((i = 1; i <= WARM_PAR; i++)); do
            for sub in live archive renewal; do
                [ -d "$dir/cb$i/config/$sub" ] && cp -a "$dir/cb$i/config/$sub" "$dir/cb/config/"
            done
            sed -i "s|$dir/cb$i/|$dir/cb/|g" "$dir"/cb/config/renewal/*.conf
            rm -rf "$dir/cb$i"
        done
        stop_pid "$WEBROOT_PID"
        ;;
    lego)
        start_webroot "$dir"
        # The first one registers the account; then WARM_PAR at a time.
        warm_lego "$dir" c1.example.com run >"$dir/setup.log" 2>&1
        export -f warm_lego
        export CA_PEM DIRECTORY
        seq 2 "$WARM_COUNT" | timeout "$WARM_TIMEOUT" xargs -P "$WARM_PAR" -I{} \
            bash -c 'warm_lego "$0" "c{}.example.com" run' "$dir" >>"$dir/setup.log" 2>&1
        stop_pid "$WEBROOT_PID"
        ;;
    esac
    ! warm_sums "$client" "$dir" | grep -q missing
}

# The timed renewal of every certificate of client $1 in $2.
warm_renew() {
    local client=$1 dir=$2
    case $client in
    certkeeper)
        "$CERTKEEPER_BIN" --config "$dir/certkeeper.toml" --log warn renew --force ;;
    certbot)
        warm_certbot "$dir/cb" renew --force-renewal ;;
    lego)
        # lego renews when fewer than --days days are left: more than any pebble certificate has.
        seq 1 "$WARM_COUNT" | xargs -P "$WARM_PAR" -I{} \
            bash -c 'warm_lego "$0" "c{}.example.com" renew --days 99999 --no-random-sleep' "$dir" ;;
    esac
}

measure_warm_one() {
    local client=$1 dir rc t0 t1 p0 p1 changed
    dir=$WORK/runs/$client-warm
    rm -rf "$dir"
    mkdir -p "$dir"
    log "warm: $client issues $WARM_COUNT certificates (not timed)"
    if ! warm_setup "$client" "$dir"; then
        log "warm: $client setup FAILED; last lines of $dir/setup.log:"
        tail -3 "$dir/setup.log" | sed 's/^/    /' >&2
        printf '%s\tFAILED\t-\t-\t-\t-\t-\n' "$client" >>"$WARM"
        return
    fi
    warm_sums "$client" "$dir" >"$dir/before.md5"
    [ "$client" != certkeeper ] && start_webroot "$dir"
    export -f warm_lego
    export CA_PEM DIRECTORY
    p0=$(cpu_seconds "$PEBBLE_PID")
    t0=$EPOCHREALTIME
    CLIENT=$client DIR=$dir timeout "$WARM_TIMEOUT" /usr/bin/time -f '%U %S %M' -o "$dir/time.txt" \
        bash -c "$(declare -f warm_renew warm_certbot); $(declare -p WARM_COUNT WARM_PAR CERTKEEPER_BIN HTTP_PORT); warm_renew \"\$CLIENT\" \"\$DIR\"" \
        >"$dir/renew.log" 2>&1
    rc=$?
    t1=$EPOCHREALTIME
    p1=$(cpu_seconds "$PEBBLE_PID")
    [ "$client" != certkeeper ] && stop_pid "$WEBROOT_PID"
    warm_sums "$client" "$dir" >"$dir/after.md5"
    changed=$(paste -d' ' "$dir/before.md5" "$dir/after.md5" | awk '$1 != $3 && $3 != "missing" { n++ } END { print n + 0 }')
    if [ "$rc" != 0 ] || [ "$changed" != "$WARM_COUNT" ]; then
        log "warm: $client renewal FAILED (exit $rc, $changed of $WARM_COUNT renewed); last lines:"
        tail -3 "$dir/renew.log" | sed 's/^/    /' >&2
        printf '%s\tFAILED\t-\t-\t-\t-\t%s\n' "$client" "$changed" >>"$WARM"
        return
    fi
    printf '%s\tok\t%s\t%s\t%s\t%s\t%s\n' "$client" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')" \
        "$(awk '{ printf "%.2f", $1 + $2 }' "$dir/time.txt")" "$(awk '{ print $3 }' "$dir/time.txt")" \
        "$(awk -v a="$p0" -v b="$p1" 'BEGIN { printf "%.2f", b - a }')" "$changed" >>"$WARM"
    log "warm: $client renewed $changed certificates: $(tail -1 "$WARM" | cut -f3-6)"
}

measure_warm() {
    local c
    WARM=$WORK/warm.tsv
    : >"$WARM"
    pick_http_port # one port for every setup and renewal (certbot keeps it in its renewal conf)
    start_pebble
    for c in $CLIENTS; do measure_warm_one "$c"; done
    stop_pebble
}

print_warm() {
    echo "Warm: $WARM_COUNT installed certificates renewed with an existing account, one pebble (load $(cut -d' ' -f1-3 /proc/loadavg)):"
    echo
    echo "| client | renewal wall (s) | CPU user+sys (s) | CPU per certificate (ms) | peak RSS (MiB) | pebble CPU meanwhile (s) | client CPU / pebble CPU |"
    echo "|---|---|---|---|---|---|---|"
    awk -F'\t' -v n="$WARM_COUNT" '
        $2 != "ok" { printf "| %s | FAILED (%s renewed) | | | | | |\n", $1, $7; next }
        { printf "| %s | %.2f | %.2f | %.1f | %.1f | %.2f | %.2f |\n", $1, $3, $4, 1000 * $4 / n, $5 / 1024, $6, ($6 > 0 ? $4 / $6 : 0) }' "$WARM"
}
