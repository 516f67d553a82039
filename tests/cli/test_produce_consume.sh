#!/usr/bin/env bash
# The operator tools from the shell: --help, one-line usage errors with exit 2, and a live
# produce -> consume round trip on `bertstream broker` in the json and text framings.
# Usage: bash test_produce_consume.sh path/to/bertstream
set -u
BIN=${1:?usage: test_produce_consume.sh BIN}
tmp=$(mktemp -d /tmp/bertstream-cli-XXXXXX)
broker_pid=
cleanup() {
    if [ -n "$broker_pid" ] && kill -0 "$broker_pid" 2>/dev/null; then
        kill -TERM "$broker_pid" 2>/dev/null
        wait "$broker_pid" 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fails=0
ok() { echo "ok   $1"; }
fail() { echo "FAIL $1"; fails=$((fails + 1)); }

# --help: exit 0, usage on stdout
for cmd in broker produce consume; do
    if "$BIN" "$cmd" --help >"$tmp/help" 2>&1 && grep -q "usage: bertstream $cmd" "$tmp/help"; then
        ok "$cmd --help"
    else
        fail "$cmd --help"
    fi
done

# usage errors: exit 2 and exactly one line on stderr, naming the problem
usage_error() { # WANT_SUBSTRING ARGS...
    local want=$1
    shift
    "$BIN" "$@" </dev/null >"$tmp/out" 2>"$tmp/err"
    local rc=$? lines
    lines=$(wc -l <"$tmp/err")
    if [ "$rc" -eq 2 ] && [ "$lines" -eq 1 ] && grep -q -- "$want" "$tmp/err"; then
        ok "usage error: $* -> $(cat "$tmp/err")"
    else
        fail "usage error: $* (rc=$rc, $lines lines: $(cat "$tmp/err"))"
    fi
}
usage_error "--brokers is required" produce --topic t
usage_error "--topic is required" consume --brokers localhost:9092
usage_error "needs --schema-id" produce --brokers b --topic t --framing confluent
usage_error "review or labeled_review" produce --brokers b --topic t --schema review_score
usage_error "unknown framing 'xml'" produce --brokers b --topic t --framing xml
usage_error "does not carry review_score" consume --brokers b --topic t --framing text
usage_error "--max" consume --brokers b --topic t --max 0
usage_error "unknown option '--bogus'" consume --bogus
usage_error "-X" produce --brokers b --topic t -X no.such.property=1
usage_error "--brokers" broker --brokers 0
usage_error "needs a value" broker --topics

# live round trip
"$BIN" broker --topics cli-json:2,cli-text:1 </dev/null >"$tmp/broker.out" 2>"$tmp/broker.err" &
broker_pid=$!
for _ in $(seq 100); do
    [ -s "$tmp/broker.out" ] && break
    sleep 0.1
done
bootstrap=$(head -n 1 "$tmp/broker.out")
if [ -z "$bootstrap" ]; then
    fail "broker printed its bootstrap servers ($(cat "$tmp/broker.err"))"
    exit 1
fi
ok "broker at $bootstrap"

printf '%s\n' '{"review_id":"j1","text":"tab\there","source":"web"}' '{"review_id":"j2","text":"","created_at":5}' >"$tmp/in.jsonl"
if "$BIN" produce --brokers "$bootstrap" --topic cli-json --framing json <"$tmp/in.jsonl" 2>"$tmp/err" &&
    grep -q "2 delivered" "$tmp/err"; then
    ok "produce --framing json: $(cat "$tmp/err")"
else
    fail "produce --framing json: $(cat "$tmp/err")"
fi
"$BIN" consume --brokers "$bootstrap" --topic cli-json --schema review --framing json --from-beginning --max 2 \
    --timeout-ms 20000 >"$tmp/out.jsonl" 2>"$tmp/err"
if grep -q '"_key":"j1","review_id":"j1","text":"tab\\there","source":"web","created_at":null}' "$tmp/out.jsonl" &&
    grep -q '"_key":"j2","review_id":"j2","text":"","source":null,"created_at":5}' "$tmp/out.jsonl"; then
    ok "consume --framing json reads both reviews back"
else
    fail "consume --framing json: $(cat "$tmp/out.jsonl" "$tmp/err")"
fi

printf '%s\n' '{"review_id":"t1","text":"plain words"}' | "$BIN" produce --brokers "$bootstrap" --topic cli-text \
    --framing text 2>"$tmp/err" || fail "produce --framing text: $(cat "$tmp/err")"
printf '%s\n' '{"review_id":"t2","text":"no key"}' | "$BIN" produce --brokers "$bootstrap" --topic cli-text \
    --framing text --key-field "" 2>"$tmp/err" || fail "produce --key-field '': $(cat "$tmp/err")"
"$BIN" consume --brokers "$bootstrap" --topic cli-text --schema review --framing text --from-beginning --max 2 \
    --timeout-ms 20000 >"$tmp/out.jsonl" 2>"$tmp/err"
if grep -q '"_offset":0,.*"_key":"t1","review_id":"t1","text":"plain words"' "$tmp/out.jsonl" &&
    grep -q '"_offset":1,.*"_key":null,"review_id":"cli-text/0/1","text":"no key"' "$tmp/out.jsonl"; then
    ok "text framing: review_id is the key, else topic/partition/offset"
else
    fail "text framing: $(cat "$tmp/out.jsonl" "$tmp/err")"
fi

# a consumer with nothing to read stops after --timeout-ms
start=$(date +%s)
"$BIN" consume --brokers "$bootstrap" --topic cli-json --timeout-ms 1000 >"$tmp/out" 2>"$tmp/err"
rc=$?
if [ "$rc" -eq 0 ] && [ ! -s "$tmp/out" ] && [ $(($(date +%s) - start)) -lt 15 ]; then
    ok "consume exits 0 after --timeout-ms idle"
else
    fail "consume idle exit (rc=$rc): $(cat "$tmp/err")"
fi

echo "$fails failed"
[ "$fails" -eq 0 ]
