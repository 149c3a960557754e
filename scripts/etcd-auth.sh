#!/usr/bin/env bash
# Turns on etcd's authentication for a Sealpost cluster (docs/SECURITY.md, "etcd"): one
# etcd user per role, each allowed only its own keys --
#   inbox-<s>  read/write /sealpost/<cluster>/inbox-<s>/   (the copies of shard s)
#   keys       read/write /sealpost/<cluster>/keys-0/      (the key store's copies)
#   router     read /sealpost/<cluster>/, read/write /sealpost/<cluster>/router/
# plus root and the operator user named by the admin certificate's common name (etcdctl
# over gRPC logs in by certificate). The servers speak etcd's JSON gateway, which takes no
# certificate names: they log in with a password (--etcd-user, --etcd-password-file) and
# present a client certificate without a common name (scripts/certs.sh etcd-client).
#
#   scripts/etcd-auth.sh ENDPOINT CERTDIR ADMIN CLUSTER SHARDS USERDIR
#     ENDPOINT  https://host:2379
#     CERTDIR   holds root-ca.pem and ADMIN.pem/ADMIN.key (the operator's certificate)
#     CLUSTER   the --etcd-cluster name; SHARDS the number of inbox shards
#     USERDIR   one file per user with its password (made, mode 0600, when missing)
#
# Safe to run on every start (compose runs it as a one-shot service): a user or role that
# exists is kept, its password set again from USERDIR (the file is the truth; etcd then
# drops that user's tokens and the servers log in again), permissions are granted again,
# and `auth enable` on an enabled etcd is a no-op. Any other error fails it. The servers
# retry etcd until it has run.
set -euo pipefail
[ $# -eq 6 ] || { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
ep=$1 c=$2 admin=$3 cluster=$4 shards=$5 users=$6
[[ $shards =~ ^[1-9][0-9]*$ ]] || { echo "etcd-auth: SHARDS must be a positive number" >&2; exit 2; }
[[ $cluster =~ ^[A-Za-z0-9_-]+$ ]] || { echo "etcd-auth: bad cluster name" >&2; exit 2; }
# etcdctl 3.4's user and role commands wait forever for an unreachable etcd (they ignore
# --command-timeout): bounded here, so a run against an etcd not up yet fails and is retried.
ctl() {
	ETCDCTL_API=3 ETCDCTL_CACERT="$c/root-ca.pem" ETCDCTL_CERT="$c/$admin.pem" \
		ETCDCTL_KEY="$c/$admin.key" timeout 30 etcdctl --endpoints "$ep" --command-timeout=5s "$@" >/dev/null
}
# add KIND NAME ARGS...: `KIND add`, true when KIND NAME already exists (this run repeats).
add() {
	local kind=$1 err
	shift
	err=$(ctl "$kind" add "$@" 2>&1 >/dev/null) && return 0
	if [[ $err == *"etcdserver: $kind name already exists"* ]]; then return 0; fi
	printf 'etcd-auth: %s add %s: %s\n' "$kind" "$1" "${err:-no answer}" >&2
	return 1
}
ctl endpoint status || { echo "etcd-auth: no answer from etcd at $ep" >&2; exit 1; }
p=/sealpost/$cluster
# A read-only USERDIR (compose mounts it so) is fine when it is private already.
[ -d "$users" ] || (umask 077 && mkdir -p "$users")
[ "$(stat -c %a "$users")" = 700 ] || chmod 700 "$users"
names=(root keys router)
for ((s = 0; s < shards; s++)); do names+=("inbox-$s"); done
for u in "${names[@]}"; do
	[ -s "$users/$u" ] || (umask 077 && openssl rand -hex 24 >"$users/$u")
	if ! ctl user get "$u" 2>/dev/null; then
		add user "$u" --interactive=false <"$users/$u"
	else
		ctl user passwd "$u" --interactive=false <"$users/$u"
	fi
done
add user "$admin" --no-password
ctl user grant-role root root
ctl user grant-role "$admin" root
for ((s = 0; s < shards; s++)); do
	add role "inbox-$s"
	ctl role grant-permission "inbox-$s" readwrite --prefix=true "$p/inbox-$s/"
	ctl user grant-role "inbox-$s" "inbox-$s"
done
add role keys
ctl role grant-permission keys readwrite --prefix=true "$p/keys-0/"
ctl user grant-role keys keys
add role router
ctl role grant-permission router read --prefix=true "$p/"
ctl role grant-permission router readwrite --prefix=true "$p/router/"
ctl user grant-role router router
ctl auth enable
echo "etcd-auth: authentication on; passwords in $users"
