#!/usr/bin/env bash
# No secret reaches a log (issue 14, docs/SECURITY.md "Secrets and logs"). A private dev
# cluster (scripts/devcluster.sh, pushsrv on) is driven through the CLI the way a user
# would: register, a registration-lock PIN set and then needed by a re-registration (a
# wrong PIN first), a push token registered, a second device linked with its link code,
# a message sent and read. Then every log the cluster wrote is searched for each secret
# it handled: the PIN, the push token, the link code, the message text, the Redis
# password, each etcd user's password, the routers' admin token (used on /drain), and
# every line of every private key file. One-time codes are not searched: the dev sender
# exists to show them (docs/KEYSRV.md).
# Stops only the cluster it starts (devcluster down, by its pid files).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${SP_BIN:-bin}
[[ "$bin" = /* ]] || bin=$root/$bin
dc=$root/scripts/devcluster.sh
dir=$(mktemp -d /tmp/sp-secrets-XXXXXX)
export SP_DEVCLUSTER_DIR=$dir SP_BIN=$bin
# pushsrv runs only with gateway options; a gateway where nothing listens is enough here.
export SEALPOST_PUSH_ARGS="--fcm-url https://127.0.0.1:1/v1/projects/test/messages:send"
cleanup() {
	"$dc" down >/dev/null 2>&1 || true
	rm -rf "$dir"
}
trap cleanup EXIT
. "$root/tests/lib/devcluster_up.sh"
sp_devcluster_up "$dc"
. "$dir/env"
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
sp() { # sp HOME ARGS...: the CLI with a home of its own in the cluster dir
	local home=$1
	shift
	"$bin/sealpost" --home "$dir/home-$home" "$@"
}
code_of() { "$dc" otp "$1"; }
field() { jq -r ".$1 // empty" | head -n 1; }

pin=$(printf 'pin%s' "$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')")
token=$(printf 'tok%s' "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')")
text=$(printf 'text%s' "$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')")

# Alice: account, PIN, push token.
sp alice register +15550701 >/dev/null
sp alice verify +15550701 "$(code_of +15550701)" >/dev/null
sp alice set-pin "$pin" | grep -q pin_set || fail "set-pin"
sp alice push register --platform fcm "$token" >/dev/null || fail "push register"
alice=$(sp alice whoami | field user)

# Bob: account, a linked second device, a message to alice, read.
sp bob register +15550702 >/dev/null
sp bob verify +15550702 "$(code_of +15550702)" >/dev/null
sp bob2 link --wait 60 >"$dir/link.out" 2>&1 &
link_pid=$!
link_code=
for _ in $(seq 100); do
	link_code=$(field link_code <"$dir/link.out" 2>/dev/null || true)
	[ -n "$link_code" ] && break
	sleep 0.1
done
[ -n "$link_code" ] || fail "no link code"
sp bob link-confirm "$link_code" >/dev/null || fail "link-confirm"
wait "$link_pid" || fail "link did not finish"
sp bob contact add +15550701 "$alice" >/dev/null
sp bob send +15550701 "$text" >/dev/null || fail "send"
sp alice recv --wait 5 | grep -q "$text" || fail "alice did not get the message"
sp alice read +15550702 >/dev/null || fail "read"

# A re-registration of alice's number on a new device: a wrong PIN, then the right one.
sp alice-new register +15550701 >/dev/null
if sp alice-new verify +15550701 "$(code_of +15550701)" --pin "${pin}x" >/dev/null 2>&1; then
	fail "a wrong PIN was taken"
fi
sp alice-new register +15550701 >/dev/null || true
sp alice-new verify +15550701 "$(code_of +15550701)" --pin "$pin" >/dev/null || fail "the right PIN was refused"

# The admin token, used.
admin_token=$(cat "$dir/admin-token")
curl -s -m 5 -X POST -H "Authorization: Bearer $admin_token" \
	"http://127.0.0.1:$((SP_PORT_BASE + 9))/undrain?name=connsrv-0" | grep -q '"draining"' ||
	fail "the admin listener did not take the token"

# Every log the cluster wrote, the CLI's stderr aside (it is the user's own terminal).
logs=("$dir"/logs/*)
[ ${#logs[@]} -gt 5 ] || fail "expected the cluster's logs, found ${#logs[@]}"
search() { # search WHAT SECRET
	[ ${#2} -ge 8 ] || { fail "$1: secret too short to search for"; return; }
	if grep -rlF -- "$2" "${logs[@]}" >"$dir/hits" 2>/dev/null; then
		fail "$1 in $(tr '\n' ' ' <"$dir/hits")"
	fi
}
# The search itself finds what is there: the servers log their own names, and alice's id.
grep -rqF -- "connsrv-0" "${logs[@]}" || fail "the search finds nothing, even a member's name"
search "the registration PIN" "$pin"
search "the push token" "$token"
search "the link code" "$link_code"
search "the message text" "$text"
search "the Redis password" "$(cat "$dir/redis-password")"
search "the admin token" "$admin_token"
n=0
for f in "$dir"/etcd-users/*; do
	search "etcd password of $(basename "$f")" "$(cat "$f")"
	n=$((n + 1))
done
[ $n -ge 3 ] || fail "expected etcd users' passwords, found $n"
n=0
while IFS= read -r -d '' key; do
	while IFS= read -r line; do
		case $line in -----*) continue ;; esac
		[ ${#line} -ge 32 ] && search "a line of $(basename "$key")" "$line"
	done <"$key"
	n=$((n + 1))
done < <(find "$dir/certs" -name '*.key' -print0)
[ $n -ge 10 ] || fail "expected the members' private keys, found $n"

if [ $fails -ne 0 ]; then
	echo "$fails failed"
	exit 1
fi
echo "no secret in ${#logs[@]} logs"
