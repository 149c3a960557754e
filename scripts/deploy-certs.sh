#!/usr/bin/env bash
# Every secret the files in deploy/ expect, with the names they use: the internal
# certificates (scripts/certs.sh: cluster root, role CAs, one certificate per member,
# the trust bundles), the etcd client certificates and etcd users' passwords, the routers'
# operator token, and Redis's password and config.
#
#   scripts/deploy-certs.sh DIR [MEMBER=ADDR ...]
#
# Members (as in deploy/compose/cluster.ini and the systemd units): etcd, router-a,
# router-b, keysrv-a..c, inbox-0a..inbox-2c, connsrv-0, connsrv-1, and etcdctl (the
# operator's etcd client). Each certificate names its member (DNS:<member>, what the
# compose services are called); MEMBER=ADDR adds the host name or IP address others dial
# it at (systemd: e.g. router-a=10.0.0.1 router-a=r1.example.net; repeat for several).
#
# DIR/ca/         what scripts/certs.sh made, the CA keys included: keep it offline
# DIR/internal/   what the servers read (no CA key): root-ca.pem, <role>-ca.pem,
#                 <member>.pem/.key, <member>-etcd.pem/.key (routers, keysrvs, inbox
#                 copies: etcd client certificates without a common name), the bundles
#                 members.pem, servers.pem, keysrv-dial.pem, inbox-dial.pem,
#                 connsrv-inbox.pem (systemd: ship each host the bundles and its own
#                 members' files only)
# DIR/etcd-users/<user>  etcd passwords (root, keys, router, inbox-0..2) for
#                 scripts/etcd-auth.sh and each role's --etcd-password-file
# DIR/admin-token     the routers' operator token (--admin-token-file)
# DIR/redis-password  connsrv's Redis password (--redis-password-file, user sealpost)
# DIR/redis.conf      Redis: the default user off, user sealpost on routes (r:*) only
#
# Existing files are kept (safe to repeat; to re-issue a member's certificate with new
# addresses, delete DIR/ca/<member>.pem first). Secrets and keys are mode 0600; with
# SEALPOST_UID set (run as root) every file is chowned to that uid (compose: 999, the
# image's sealpost user and Redis's).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
certs=$root/scripts/certs.sh

usage() { sed -n '6,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage
dir=$1
shift

routers=(router-a router-b)
keysrvs=(keysrv-a keysrv-b keysrv-c)
inboxes=()
for i in 0 1 2; do for j in a b c; do inboxes+=("inbox-$i$j"); done; done
connsrvs=(connsrv-0 connsrv-1)
all=(etcd etcdctl "${routers[@]}" "${keysrvs[@]}" "${inboxes[@]}" "${connsrvs[@]}")

# Extra SANs per member, from MEMBER=ADDR.
declare -A extra
for a in "$@"; do
	[[ $a == *=* ]] || usage
	m=${a%%=*} addr=${a#*=}
	[[ " ${all[*]} " == *" $m "* ]] || { echo "deploy-certs: no member '$m' (one of: ${all[*]})" >&2; exit 2; }
	[[ $addr =~ ^[A-Za-z0-9.:-]+$ ]] || { echo "deploy-certs: bad address '$addr'" >&2; exit 2; }
	if [[ $addr =~ ^[0-9.]+$ || $addr == *:* ]]; then san=IP:$addr; else san=DNS:$addr; fi
	extra[$m]="${extra[$m]:-} $san"
done

c=$dir/ca
member() { # ROLE NAME
	# shellcheck disable=SC2086 # the extra SANs are separate words
	"$certs" "$c" member "$1" "$2" "DNS:$2" ${extra[$2]:-}
}
"$certs" "$c" root
for r in etcd router keysrv inbox connsrv admin; do "$certs" "$c" role $r; done
member etcd etcd
member admin etcdctl
for n in "${routers[@]}"; do member router "$n"; done
for n in "${keysrvs[@]}"; do member keysrv "$n"; done
for n in "${inboxes[@]}"; do member inbox "$n"; done
for n in "${connsrvs[@]}"; do member connsrv "$n"; done
# etcd client certificates: no common name (etcd's JSON gateway refuses one once
# authentication is on; the member logs in as its role's etcd user).
for n in "${routers[@]}"; do "$certs" "$c" etcd-client router "$n"; done
for n in "${keysrvs[@]}"; do "$certs" "$c" etcd-client keysrv "$n"; done
for n in "${inboxes[@]}"; do "$certs" "$c" etcd-client inbox "$n"; done
# The same trust as the dev cluster (scripts/devcluster.sh, docs/SECURITY.md "Who may
# connect to what").
"$certs" "$c" bundle members connsrv inbox keysrv        # routers' listeners
"$certs" "$c" bundle servers router keysrv inbox connsrv # what connsrv dials
"$certs" "$c" bundle keysrv-dial router keysrv
"$certs" "$c" bundle inbox-dial router inbox
"$certs" "$c" bundle connsrv-inbox connsrv inbox # inbox request socket, connsrv pull

umask 077
mkdir -p "$dir/internal"
for f in "$c"/*.pem; do cp "$f" "$dir/internal/"; done
for n in "${all[@]}"; do cp "$c/$n.key" "$dir/internal/"; done
for n in "${routers[@]}" "${keysrvs[@]}" "${inboxes[@]}"; do cp "$c/$n-etcd.key" "$dir/internal/"; done
# One etcd user per role (scripts/etcd-auth.sh makes them with these passwords). 24 random
# bytes, so etcd may run with --bcrypt-cost 4.
mkdir -p "$dir/etcd-users"
chmod 700 "$dir/etcd-users"
for u in root keys router inbox-0 inbox-1 inbox-2; do
	[ -s "$dir/etcd-users/$u" ] || openssl rand -hex 24 >"$dir/etcd-users/$u"
	chmod 600 "$dir/etcd-users/$u"
done
[ -s "$dir/admin-token" ] || head -c 32 /dev/urandom | base64 -w0 >"$dir/admin-token"
[ -s "$dir/redis-password" ] || head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$dir/redis-password"
# Redis holds only routes (losing them delays push, never loses a message): no persistence.
cat >"$dir/redis.conf" <<CONF
port 6379
bind 0.0.0.0
protected-mode yes
save ""
appendonly no
user default off
user sealpost on >$(cat "$dir/redis-password") ~r:* +@all -@dangerous
CONF
chmod 600 "$dir/admin-token" "$dir/redis-password" "$dir/redis.conf"
if [ -n "${SEALPOST_UID:-}" ]; then
	[[ $SEALPOST_UID =~ ^[0-9]+$ ]] || { echo "deploy-certs: SEALPOST_UID must be a number" >&2; exit 2; }
	chown -R "$SEALPOST_UID" "$dir"
fi
echo "deploy-certs: secrets for ${#all[@]} members in $dir"
