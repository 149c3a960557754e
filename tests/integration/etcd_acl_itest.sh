#!/usr/bin/env bash
# etcd's per-role users on a private dev cluster (docs/SECURITY.md "etcd"): the cluster
# comes up with authentication on (every shard and the key store elect a primary through
# it), and through etcd's JSON gateway, as the servers speak it:
#  - an inbox shard's user reads and writes its own group's keys and nothing else (not
#    another shard's, not the key store's, not the routers');
#  - the key store's user likewise; the routers' user reads everything and writes only
#    under router/;
#  - no token, a wrong password, a certificate with a common name (the gateway refuses it
#    once authentication is on) and no certificate at all are refused;
#  - scripts/etcd-auth.sh may run again (it keeps what exists) and still fails on other errors;
#  - no password reaches a log.
# Stops only the cluster it starts (devcluster down, by its pid files).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${SP_BIN:-bin}
[[ "$bin" = /* ]] || bin=$root/$bin
dc=$root/scripts/devcluster.sh
dir=$(mktemp -d /tmp/sp-etcdacl-XXXXXX)
export SP_DEVCLUSTER_DIR=$dir SP_BIN=$bin
cleanup() {
	"$dc" down >/dev/null 2>&1 || true
	rm -rf "$dir"
}
trap cleanup EXIT
. "$root/tests/lib/devcluster_up.sh"
sp_devcluster_up "$dc"
. "$dir/env"
c=$dir/certs/internal
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
b64() { printf '%s' "$1" | base64 -w0; }

# gw CERT PATH BODY [TOKEN]: the gateway's answer (body), or "curl-error" when TLS fails.
gw() {
	local cert=$1 path=$2 body=$3 token=${4:-} args=()
	[ -n "$cert" ] && args+=(--cert "$c/$cert.pem" --key "$c/$cert.key")
	[ -n "$token" ] && args+=(-H "Authorization: $token")
	curl -s -m 10 --cacert "$c/root-ca.pem" "${args[@]}" "$SEALPOST_ETCD$path" -d "$body" \
		|| echo curl-error
}
login() { # login CERT USER -> token
	gw "$1" /v3/auth/authenticate "{\"name\":\"$2\",\"password\":\"$(cat "$dir/etcd-users/$2")\"}" |
		jq -r '.token // empty'
}
put() { gw "$1" /v3/kv/put "{\"key\":\"$(b64 "$3")\",\"value\":\"$(b64 probe)\"}" "$2"; }
get() { gw "$1" /v3/kv/range "{\"key\":\"$(b64 "$3")\",\"range_end\":\"$(b64 "$3~")\"}" "$2"; }
ok() { # ok WHAT ANSWER: no error in it
	if ! jq -e 'has("header") and (has("error") | not)' >/dev/null 2>&1 <<<"$2"; then
		fail "$1 was refused: $2"
	fi
}
denied() { # denied WHAT ANSWER: refused for want of permission
	if ! grep -q 'permission denied' <<<"$2"; then fail "$1 was not refused: $2"; fi
}
p=/sealpost/$SEALPOST_ETCD_CLUSTER

t0=$(login inbox-0a-etcd inbox-0)
tk=$(login keysrv-a-etcd keys)
tr=$(login router-a-etcd router)
[ -n "$t0" ] && [ -n "$tk" ] && [ -n "$tr" ] || { echo "FAIL: a role could not log in"; exit 1; }

ok "inbox-0 reading its group" "$(get inbox-0a-etcd "$t0" "$p/inbox-0/")"
ok "inbox-0 writing its group" "$(put inbox-0a-etcd "$t0" "$p/inbox-0/acl-probe")"
denied "inbox-0 writing shard 1's leader key" "$(put inbox-0a-etcd "$t0" "$p/inbox-1/leader")"
denied "inbox-0 reading shard 1" "$(get inbox-0a-etcd "$t0" "$p/inbox-1/")"
denied "inbox-0 writing the key store's sync set" "$(put inbox-0a-etcd "$t0" "$p/keys-0/sync")"
denied "inbox-0 writing the routers' keys" "$(put inbox-0a-etcd "$t0" "$p/router/drain")"
ok "keys reading its group" "$(get keysrv-a-etcd "$tk" "$p/keys-0/")"
denied "keys writing shard 0" "$(put keysrv-a-etcd "$tk" "$p/inbox-0/leader")"
ok "router reading shard 2" "$(get router-a-etcd "$tr" "$p/inbox-2/")"
ok "router writing its keys" "$(put router-a-etcd "$tr" "$p/router/acl-probe")"
denied "router writing shard 2" "$(put router-a-etcd "$tr" "$p/inbox-2/leader")"
denied "router writing the key store" "$(put router-a-etcd "$tr" "$p/keys-0/leader")"

a=$(get inbox-0a-etcd "" "$p/inbox-0/")
grep -q '"error"' <<<"$a" || fail "a read without a token was served: $a"
a=$(gw inbox-0a-etcd /v3/auth/authenticate '{"name":"inbox-0","password":"not-the-password"}')
grep -q 'authentication failed' <<<"$a" || fail "a wrong password was not refused: $a"
a=$(get inbox-0a "$t0" "$p/inbox-0/")
grep -q 'CommonName' <<<"$a" || fail "a certificate with a common name was served: $a"
a=$(get "" "$t0" "$p/inbox-0/")
[ "$a" = curl-error ] || fail "a client without a certificate was served: $a"

# scripts/etcd-auth.sh again on the running cluster (compose runs it on every start): it
# passes with the users, roles and authentication already there, the passwords and the
# grants stay as they were, and an error other than "already exists" still fails it.
"$root/scripts/etcd-auth.sh" "$SEALPOST_ETCD" "$c" etcdctl "$SEALPOST_ETCD_CLUSTER" 3 \
	"$dir/etcd-users" >"$dir/auth2.log" 2>&1 || { cat "$dir/auth2.log"; fail "etcd-auth.sh refused a second run"; }
t0=$(login inbox-0a-etcd inbox-0)
[ -n "$t0" ] || fail "inbox-0 cannot log in after a second etcd-auth.sh"
ok "inbox-0 writing its group after a second etcd-auth.sh" "$(put inbox-0a-etcd "$t0" "$p/inbox-0/acl-probe")"
denied "inbox-0 writing shard 1 after a second etcd-auth.sh" "$(put inbox-0a-etcd "$t0" "$p/inbox-1/leader")"
# The etcd certificate as the operator's: its name is no etcd user.
if "$root/scripts/etcd-auth.sh" "$SEALPOST_ETCD" "$c" etcd "$SEALPOST_ETCD_CLUSTER" 3 \
	"$dir/etcd-users" >"$dir/auth3.log" 2>&1; then
	fail "etcd-auth.sh passed as a user etcd does not know"
fi
grep -q 'user name not found' "$dir/auth3.log" || fail "etcd-auth.sh as an unknown user: $(tail -n 2 "$dir/auth3.log")"

# The members run on it: every group has its primary (devcluster up waited for them).
for g in inbox-0 inbox-1 inbox-2 keys-0; do
	n=$(etcdctl --endpoints "$SEALPOST_ETCD" get --print-value-only "$p/$g/leader" | jq -r .name)
	[ -n "$n" ] || fail "no primary for $g"
done
for u in "$dir"/etcd-users/*; do
	if grep -rqF "$(cat "$u")" "$dir/logs"; then fail "the password of $(basename "$u") is in a log"; fi
done

if [ "$fails" -ne 0 ]; then echo "etcd_acl_itest: $fails failure(s)"; exit 1; fi
echo "etcd_acl_itest: ok"
