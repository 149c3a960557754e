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
# Run once per etcd cluster, before the servers start with --etcd-user; it refuses to run
# twice (etcd answers "authentication is already enabled"... as an error on `auth enable`).
set -euo pipefail
[ $# -eq 6 ] || { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
ep=$1 c=$2 admin=$3 cluster=$4 shards=$5 users=$6
[[ $shards =~ ^[1-9][0-9]*$ ]] || { echo "etcd-auth: SHARDS must be a positive number" >&2; exit 2; }
[[ $cluster =~ ^[A-Za-z0-9_-]+$ ]] || { echo "etcd-auth: bad cluster name" >&2; exit 2; }
ctl() {
	ETCDCTL_API=3 ETCDCTL_CACERT="$c/root-ca.pem" ETCDCTL_CERT="$c/$admin.pem" \
		ETCDCTL_KEY="$c/$admin.key" etcdctl --endpoints "$ep" --command-timeout=5s "$@" >/dev/null
}
p=/sealpost/$cluster
mkdir -p "$users"
chmod 700 "$users"
names=(root keys router)
for ((s = 0; s < shards; s++)); do names+=("inbox-$s"); done
for u in "${names[@]}"; do
	[ -s "$users/$u" ] || (umask 077 && openssl rand -hex 24 >"$users/$u")
	ctl user add "$u" --interactive=false <"$users/$u"
done
ctl user add "$admin" --no-password
ctl user grant-role root root
ctl user grant-role "$admin" root
for ((s = 0; s < shards; s++)); do
	ctl role add "inbox-$s"
	ctl role grant-permission "inbox-$s" readwrite --prefix=true "$p/inbox-$s/"
	ctl user grant-role "inbox-$s" "inbox-$s"
done
ctl role add keys
ctl role grant-permission keys readwrite --prefix=true "$p/keys-0/"
ctl user grant-role keys keys
ctl role add router
ctl role grant-permission router read --prefix=true "$p/"
ctl role grant-permission router readwrite --prefix=true "$p/router/"
ctl user grant-role router router
ctl auth enable
echo "etcd-auth: authentication on; passwords in $users"
