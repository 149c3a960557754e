#!/usr/bin/env bash
# Sealpost dev cluster on loopback: Redis, etcd, two routers (router-a, router-b, sharing
# the map through etcd), the key store and 3 inbox shards of
# $SEALPOST_DEVCLUSTER_COPIES copies each (default 3: keysrv-a, keysrv-b, keysrv-c;
# inbox-0a, inbox-0b, inbox-0c, ...),
# 2 connsrvs, and with $SEALPOST_PUSH_ARGS (pushsrv's gateway options, e.g. "--fcm-url
# https://...") one pushsrv (docs/PUSH.md; without it push is off and no pushsrv runs),
# with fresh dev TLS certificates (a dev CA the client trusts) and internal
# ones from scripts/certs.sh (certs/internal/: etcd serves https to members with a
# certificate of the cluster root; every link between servers is mutual TLS, each
# listener trusting only the role CAs it serves: docs/SECURITY.md "Internal links").
#
#   scripts/devcluster.sh up|down|status|logs [NAME]|restart NAME|otp PHONE|env|drain NAME [ROUTER]|undrain NAME [ROUTER]
#
# State lives in $SP_DEVCLUSTER_DIR (default .devcluster/): env (shell-sourceable),
# pids/<name>.pid, logs/, data/<name>/, certs/. Ports start at $SP_PORT_BASE (default
# 17000) and stay below base + 100.
# `down` stops exactly the processes recorded in pids/. Tests run their own cluster by
# setting SP_DEVCLUSTER_DIR and SP_PORT_BASE.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${SP_DEVCLUSTER_DIR:-$root/.devcluster}
base=${SP_PORT_BASE:-17000}
bin=${SP_BIN:-$root/bin}
[[ "$bin" = /* ]] || bin=$root/$bin
copies=${SEALPOST_DEVCLUSTER_COPIES:-3}
[[ "$copies" =~ ^[123]$ ]] || { echo "devcluster: SEALPOST_DEVCLUSTER_COPIES must be 1, 2 or 3" >&2; exit 2; }
min_copies=$((copies < 2 ? copies : 2))
letters=(a b c)
inbox_names=()
keys_names=()
for ((j = 0; j < copies; j++)); do keys_names+=("keysrv-${letters[$j]}"); done
for i in 0 1 2; do for ((j = 0; j < copies; j++)); do inbox_names+=("inbox-$i${letters[$j]}"); done; done
routers=(router-a router-b)
names=(redis etcd "${routers[@]}" "${keys_names[@]}" "${inbox_names[@]}" connsrv-0 connsrv-1)
# pushsrv is not in names: it starts after the cluster is healthy (it is no member).
push_on() { [ -n "${SEALPOST_PUSH_ARGS:-}" ]; }
etcd_cluster=dev

die() { echo "devcluster: $*" >&2; exit 1; }

port_redis=$base
port_router_http=$((base + 1)) port_router_rep=$((base + 2)) port_router_pub=$((base + 3))
port_etcd=$((base + 4)) port_etcd_peer=$((base + 5))
# router-b: http, rep, pub.
port_routerb_http=$((base + 6)) port_routerb_rep=$((base + 7)) port_routerb_pub=$((base + 8))
router_http() { case $1 in router-a) echo "$port_router_http" ;; *) echo "$port_routerb_http" ;; esac; }
router_rep() { case $1 in router-a) echo "$port_router_rep" ;; *) echo "$port_routerb_rep" ;; esac; }
router_pub() { case $1 in router-a) echo "$port_router_pub" ;; *) echo "$port_routerb_pub" ;; esac; }
# keysrv copy j (a, b, c): requests, replication, metrics.
keys_no() { echo $(($(printf '%d' "'${1#keysrv-}") - 97)); }
keys_port() { echo $((base + 61 + $(keys_no "$1"))); }
keys_repl() { echo $((base + 64 + $(keys_no "$1"))); }
keys_metrics() { echo $((base + 67 + $(keys_no "$1"))); }
# Its push listener (PUSH_TOKEN_GET/PUSH_DROP only, for pushsrv: docs/PUSH.md).
keys_push() { echo $((base + 70 + $(keys_no "$1"))); }
# Each router's admin listener (POST /drain, /undrain with the token in $dir/admin-token).
router_admin() { case $1 in router-a) echo $((base + 9)) ;; *) echo $((base + 39)) ;; esac; }
# Copy j (0..2) of shard i (0..2) is number 3i + j.
copy_no() { local n=${1#inbox-}; echo $((3 * ${n:0:1} + $(printf '%d' "'${n:1:1}") - 97)); }
inbox_port() { echo $((base + 20 + $(copy_no "$1"))); }
inbox_repl() { echo $((base + 30 + $(copy_no "$1"))); }
inbox_metrics() { echo $((base + 11 + $(copy_no "$1"))); }
conn_client() { echo $((base + 40 + $1)); }
conn_pull() { echo $((base + 50 + 10 * $1)); }
conn_metrics() { echo $((base + 80 + 10 * $1)); }
port_push_metrics=$((base + 95))

# The port that answers once a process is serving.
port_of() {
	case $1 in
	redis) echo "$port_redis" ;;
	etcd) echo "$port_etcd" ;;
	router-[ab]) router_http "$1" ;;
	keysrv-*) keys_port "$1" ;;
	inbox-*) inbox_port "$1" ;;
	connsrv-*) conn_client "${1#connsrv-}" ;;
	pushsrv) echo "$port_push_metrics" ;;
	esac
}

pidfile() { echo "$dir/pids/$1.pid"; }
# A pid that exists and has not exited. An exited server stays a zombie until its parent
# (init, for these detached servers) reaps it, which some inits do only every second or
# two; a zombie holds no port or file any more, so it counts as stopped.
running() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; [ "${s%% *}" != Z ]; }
alive() { local f; f=$(pidfile "$1"); [ -f "$f" ] && running "$(cat "$f")"; }

ensure_built() {
	"$root/scripts/deps.sh"
	local missing=0
	for b in router keysrv inboxsrv connsrv pushsrv; do [ -x "$bin/$b" ] || missing=1; done
	if [ $missing = 1 ]; then
		[ "$bin" = "$root/bin" ] || die "binaries missing in $bin"
		make -C "$root" -j2 all >&2
	fi
}

# Redis with an ACL user for connsrv (routes only) and the default user off; the password
# in a 0600 file connsrv reads (--redis-password-file).
make_redis_conf() {
	local pw=$dir/redis-password
	[ -s "$pw" ] || (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$pw")
	(umask 077; cat >"$dir/redis.conf" <<CONF
port $port_redis
bind 127.0.0.1
protected-mode yes
save ""
appendonly no
dir $dir/data
user default off
user sealpost on >$(cat "$pw") ~r:* +@all -@dangerous
CONF
	)
}

make_certs() {
	local c=$dir/certs
	[ -f "$c/server.pem" ] && return 0
	mkdir -p "$c"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
		-subj "/CN=Sealpost dev CA" -keyout "$c/ca.key" -out "$c/ca.pem" 2>/dev/null
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
		-keyout "$c/server.key" -out "$c/server.csr" 2>/dev/null
	printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$c/san.ext"
	openssl x509 -req -in "$c/server.csr" -CA "$c/ca.pem" -CAkey "$c/ca.key" -CAcreateserial \
		-days 30 -extfile "$c/san.ext" -out "$c/server.pem" 2>/dev/null
	rm -f "$c/server.csr" "$c/san.ext"
}

# Internal links (docs/SECURITY.md): a cluster root, role CAs and member certificates.
# etcd serves https and requires a client certificate of the root; inbox copies replicate
# over mutual TLS trusting the inbox role CA only.
make_internal_certs() {
	local c=$dir/certs/internal t=$root/scripts/certs.sh n
	$t "$c" root
	for r in etcd router keysrv inbox connsrv push admin; do $t "$c" role $r; done
	$t "$c" member etcd etcd
	$t "$c" member admin etcdctl
	for n in "${routers[@]}"; do $t "$c" member router "$n"; done
	# etcd client certificates (no common name: the members log in as their role's user).
	for n in "${routers[@]}"; do $t "$c" etcd-client router "$n"; done
	for n in "${keys_names[@]}"; do $t "$c" etcd-client keysrv "$n"; done
	for n in "${inbox_names[@]}"; do $t "$c" etcd-client inbox "$n"; done
	for n in "${keys_names[@]}"; do $t "$c" member keysrv "$n"; done
	for n in "${inbox_names[@]}"; do $t "$c" member inbox "$n"; done
	for n in connsrv-0 connsrv-1; do $t "$c" member connsrv "$n"; done
	$t "$c" member push pushsrv
	$t "$c" bundle members connsrv inbox keysrv push   # routers' listeners
	$t "$c" bundle keysrv-clients connsrv              # keysrv's request socket
	$t "$c" bundle keysrv-push-clients push            # keysrv's push listener
	$t "$c" bundle push-dial router keysrv
	$t "$c" bundle servers router keysrv inbox connsrv # what connsrv dials
	$t "$c" bundle keysrv-dial router keysrv
	$t "$c" bundle inbox-dial router inbox
	$t "$c" bundle connsrv-inbox connsrv inbox # inbox request socket, connsrv pull
}

# Both sets of certificates. Tests start dozens of clusters: with
# $SP_DEVCLUSTER_CERTS_CACHE (tests/run.sh sets it, fresh for each run) the certificates
# made for the first cluster are copied for the next ones (the same member names and
# loopback addresses; only the ports differ, and no certificate names a port).
make_all_certs() {
	local cache=${SP_DEVCLUSTER_CERTS_CACHE:-} tmp
	local cached=$cache/copies-$copies
	if [ -n "$cache" ] && [ ! -e "$dir/certs" ] && [ -f "$cached/done" ]; then
		cp -a "$cached/certs" "$dir/certs"
		return 0
	fi
	make_certs
	make_internal_certs
	[ -n "$cache" ] && [ ! -e "$cached" ] || return 0
	mkdir -p "$cache"
	tmp=$(mktemp -d "$cache/.tmp.XXXXXX")
	cp -a "$dir/certs" "$tmp/certs" && touch "$tmp/done"
	# Another cluster may have filled the cache meanwhile: then this copy goes.
	mv -T "$tmp" "$cached" 2>/dev/null || rm -rf "$tmp"
}

# Internal TLS flags for member $1: --internal-ca DIAL (a bundle) and --internal-client-ca
# CLIENTS (a bundle or a role CA).
internal_tls() {
	local c=$dir/certs/internal
	echo "--internal-cert $c/$1.pem --internal-key $c/$1.key --internal-ca $c/$2.pem --internal-client-ca $c/$3.pem"
}

# The etcd user of member $1: one per role, each allowed only its own keys
# (docs/SECURITY.md "etcd"): inbox-<shard> its shard's group, keys the key store's,
# router the routers' keys and read access to the rest.
etcd_user_of() {
	case $1 in
	inbox-*) echo "${1:0:7}" ;;
	keysrv-*) echo keys ;;
	router-*) echo router ;;
	esac
}

# etcd flags for a member named $1 (its certificate from certs/internal, its role's user).
etcd_tls() {
	local c=$dir/certs/internal u
	u=$(etcd_user_of "$1")
	echo "--etcd https://127.0.0.1:$port_etcd --etcd-ca $c/root-ca.pem --etcd-cert $c/$1-etcd.pem --etcd-key $c/$1-etcd.key --etcd-user $u --etcd-password-file $dir/etcd-users/$u"
}

# Turns on etcd's authentication once per data dir (scripts/etcd-auth.sh: a user per
# role, each allowed only its own keys; passwords in $dir/etcd-users).
setup_etcd_auth() {
	local c=$dir/certs/internal i
	[ -f "$dir/data/etcd-auth.done" ] && return 0
	for ((i = 0; i < 50; i++)); do
		ETCDCTL_API=3 ETCDCTL_CACERT="$c/root-ca.pem" ETCDCTL_CERT="$c/etcdctl.pem" \
			ETCDCTL_KEY="$c/etcdctl.key" etcdctl --endpoints "https://127.0.0.1:$port_etcd" \
			--command-timeout=1s endpoint health >/dev/null 2>&1 && break
		sleep 0.2
	done
	"$root/scripts/etcd-auth.sh" "https://127.0.0.1:$port_etcd" "$c" etcdctl "$etcd_cluster" 3 \
		"$dir/etcd-users" >/dev/null
	touch "$dir/data/etcd-auth.done"
}

write_config() {
	mkdir -p "$dir/pids" "$dir/logs" "$dir/data/keysrv/otp"
	local cf=$dir/cluster.ini
	{
		for n in "${keys_names[@]}"; do
			echo "[$n]"; echo "role = keysrv"; echo "addr = tls+tcp://127.0.0.1:$(keys_port "$n")"
		done
		for n in "${inbox_names[@]}"; do
			echo "[$n]"; echo "role = inbox"; echo "addr = tls+tcp://127.0.0.1:$(inbox_port "$n")"; echo "shard = ${n:6:1}"
		done
		for i in 0 1; do
			echo "[connsrv-$i]"; echo "role = connsrv"; echo "addr = tls+tcp://127.0.0.1:$(conn_pull $i)"
			echo "client = 127.0.0.1:$(conn_client $i)"
		done
	} >"$cf"
	cat >"$dir/env" <<ENV
# source this file: . $dir/env
export SEALPOST_ROUTER=127.0.0.1:$port_router_http,127.0.0.1:$port_routerb_http
export SEALPOST_ROUTER_A=127.0.0.1:$port_router_http
export SEALPOST_ROUTER_B=127.0.0.1:$port_routerb_http
export SEALPOST_CA=$dir/certs/ca.pem
export SEALPOST_DEVCLUSTER=$dir
export SEALPOST_LOGS=$dir/logs
export SEALPOST_DATA=$dir/data
export SEALPOST_REDIS=127.0.0.1:$port_redis
export SEALPOST_REDIS_USER=sealpost
export SEALPOST_REDIS_PASSWORD_FILE=$dir/redis-password
export SEALPOST_CONNSRV_0=127.0.0.1:$(conn_client 0)
export SEALPOST_CONNSRV_1=127.0.0.1:$(conn_client 1)
export SEALPOST_ETCD=https://127.0.0.1:$port_etcd
export SEALPOST_ETCD_CLUSTER=$etcd_cluster
export ETCDCTL_API=3
export ETCDCTL_CACERT=$dir/certs/internal/root-ca.pem
export ETCDCTL_CERT=$dir/certs/internal/etcdctl.pem
export ETCDCTL_KEY=$dir/certs/internal/etcdctl.key
export SEALPOST_OTP_DIR=$dir/data/keysrv/otp
ENV
	for n in "${inbox_names[@]}"; do
		local v=${n#inbox-}
		echo "export SEALPOST_INBOX_${v^^}=tls+tcp://127.0.0.1:$(inbox_port "$n")" >>"$dir/env"
	done
	for n in "${keys_names[@]}"; do
		local v=${n#keysrv-}
		echo "export SEALPOST_KEYSRV_${v^^}=tls+tcp://127.0.0.1:$(keys_port "$n")" >>"$dir/env"
		echo "export SEALPOST_KEYSRV_PUSH_${v^^}=tls+tcp://127.0.0.1:$(keys_push "$n")" >>"$dir/env"
	done
}

# The command line of one process, by name.
cmdline() {
	# Members heartbeat and subscribe to both routers.
	local router="--router tls+tcp://127.0.0.1:$port_router_rep,tls+tcp://127.0.0.1:$port_routerb_rep --router-pub tls+tcp://127.0.0.1:$port_router_pub,tls+tcp://127.0.0.1:$port_routerb_pub"
	case $1 in
	redis) echo "redis-server $dir/redis.conf" ;;
	# One etcd member: a short election timeout only makes a restarted etcd serve sooner.
	etcd) local c=$dir/certs/internal
		echo "etcd --name dev --data-dir $dir/data/etcd --listen-client-urls https://127.0.0.1:$port_etcd --advertise-client-urls https://127.0.0.1:$port_etcd --cert-file $c/etcd.pem --key-file $c/etcd.key --trusted-ca-file $c/root-ca.pem --client-cert-auth --bcrypt-cost 4 --listen-peer-urls http://127.0.0.1:$port_etcd_peer --initial-advertise-peer-urls http://127.0.0.1:$port_etcd_peer --initial-cluster dev=http://127.0.0.1:$port_etcd_peer --heartbeat-interval 50 --election-timeout 250 --log-level error" ;;
	router-[ab]) echo "$bin/router --cluster-file $dir/cluster.ini --state-file $dir/data/$1.state --listen tls+tcp://127.0.0.1:$(router_rep "$1") --publish tls+tcp://127.0.0.1:$(router_pub "$1") $(internal_tls "$1" members members) --http-port $(router_http "$1") --admin-port $(router_admin "$1") --admin-token-file $dir/admin-token $(etcd_tls "$1") --etcd-cluster $etcd_cluster" ;;
	# Every copy writes codes to one directory (only the primary sends them).
	keysrv-[abc]) [[ " ${keys_names[*]} " == *" $1 "* ]] || die "no copy '$1' with $copies key store copies"
		echo "$bin/keysrv --data-dir $dir/data/$1 --otp-dir $dir/data/keysrv/otp --listen tls+tcp://127.0.0.1:$(keys_port "$1") --push-listen tls+tcp://127.0.0.1:$(keys_push "$1") --push-client-ca $dir/certs/internal/keysrv-push-clients.pem $(internal_tls "$1" keysrv-dial keysrv-clients) --repl-peer-ca $dir/certs/internal/keysrv-ca.pem --metrics-port $(keys_metrics "$1") --rate-phone-burst 50 --rate-source-burst 1000 --rate-source-per-min 6000 $router --name $1 $(etcd_tls "$1") --etcd-cluster $etcd_cluster --repl-listen tls+tcp://127.0.0.1:$(keys_repl "$1") --min-copies $min_copies ${SP_KEYSRV_ARGS:-}" ;;
	inbox-[012][abc]) [[ " ${inbox_names[*]} " == *" $1 "* ]] || die "no copy '$1' with $copies copies per shard"
		echo "$bin/inboxsrv --data-dir $dir/data/$1 --listen tls+tcp://127.0.0.1:$(inbox_port "$1") --shard ${1:6:1} --map-size 1G --metrics-port $(inbox_metrics "$1") $router --name $1 $(etcd_tls "$1") --etcd-cluster $etcd_cluster --repl-listen tls+tcp://127.0.0.1:$(inbox_repl "$1") $(internal_tls "$1" inbox-dial connsrv-inbox) --repl-peer-ca $dir/certs/internal/inbox-ca.pem --min-copies $min_copies ${SP_INBOX_ARGS:-}" ;;
	connsrv-*) local i=${1#connsrv-}
		echo "$bin/connsrv --name connsrv-$i --listen 127.0.0.1:$(conn_client $i) --cert $dir/certs/server.pem --key $dir/certs/server.key --pull tls+tcp://127.0.0.1:$(conn_pull $i) $(internal_tls "connsrv-$i" servers connsrv-inbox) --redis 127.0.0.1:$port_redis --redis-user sealpost --redis-password-file $dir/redis-password --metrics-port $(conn_metrics $i) --workers ${SP_CONNSRV_WORKERS:-1} $router ${SP_CONNSRV_ARGS:-}" ;;
	pushsrv) push_on || die "pushsrv runs only with SEALPOST_PUSH_ARGS (its gateway options)"
		local kp="" n
		for n in "${keys_names[@]}"; do kp+="${kp:+,}$n=tls+tcp://127.0.0.1:$(keys_push "$n")"; done
		echo "$bin/pushsrv $router --keysrv-push $kp $(internal_tls pushsrv push-dial push-dial) --redis 127.0.0.1:$port_redis --redis-user sealpost --redis-password-file $dir/redis-password --metrics-port $port_push_metrics $SEALPOST_PUSH_ARGS" ;;
	*) die "unknown process '$1' (one of: ${names[*]} pushsrv)" ;;
	esac
}

start_one() {
	local name=$1
	alive "$name" && { echo "$name already running (pid $(cat "$(pidfile "$name")"))"; return 0; }
	local cmd; cmd=$(cmdline "$name")
	# exec: the recorded pid is the server itself, so `down` and tests signal it directly.
	# setsid: a session of its own, so the caller's process group (a test runner that
	# kills its children's group, a terminal's Ctrl-C) does not take the server down.
	setsid bash -c "exec $cmd" >>"$dir/logs/$name.log" 2>&1 </dev/null &
	echo $! >"$(pidfile "$name")"
}

wait_port() { # host port seconds
	local i
	for ((i = 0; i < $3 * 10; i++)); do
		(exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

# The copy of group $1 (inbox-<shard>, keys-0) that holds the leader key and a sync set of
# min-copies, or "".
group_primary() {
	local out leader n
	local c=$dir/certs/internal
	# As variables, not flags: etcdctl refuses a flag that an inherited ETCDCTL_* (a
	# sourced env file) also sets.
	out=$(ETCDCTL_API=3 ETCDCTL_CACERT="$c/root-ca.pem" ETCDCTL_CERT="$c/etcdctl.pem" \
		ETCDCTL_KEY="$c/etcdctl.key" etcdctl --endpoints "https://127.0.0.1:$port_etcd" --command-timeout=2s \
		get --prefix "/sealpost/$etcd_cluster/$1/" 2>/dev/null) || return 0
	leader=$(printf '%s\n' "$out" | awk 'f{print; exit} /\/leader$/{f=1}' | jq -r '.name // empty' 2>/dev/null)
	n=$(printf '%s\n' "$out" | awk 'f{print; exit} /\/sync$/{f=1}' | jq '.members | length' 2>/dev/null || echo 0)
	[ -n "$leader" ] && [ "${n:-0}" -ge "$min_copies" ] && echo "$leader"
	return 0
}

# Every shard and the key store have a primary with a full sync set (so the first
# registration and send are accepted).
wait_primaries() {
	local i g ok
	for ((i = 0; i < 600; i++)); do
		ok=1
		for g in keys-0 inbox-0 inbox-1 inbox-2; do [ -n "$(group_primary $g)" ] || ok=0; done
		[ $ok = 1 ] && return 0
		sleep 0.1
	done
	echo "devcluster: not every shard and the key store have a primary and $min_copies copies in sync after 60 s" >&2
	return 1
}

wait_healthy() {
	local i n
	for ((i = 0; i < 300; i++)); do
		n=$(curl -sf "http://127.0.0.1:$port_router_http/map" 2>/dev/null |
			jq '[.members[] | select(.healthy)] | length' 2>/dev/null || echo 0)
		[ "$n" = $((2 + 4 * copies)) ] && return 0
		for name in "${names[@]}"; do
			alive "$name" || { echo "devcluster: $name exited; last lines of its log:" >&2
				tail -n 20 "$dir/logs/$name.log" >&2; return 1; }
		done
		sleep 0.1
	done
	echo "devcluster: not all members became healthy in 30 s" >&2
	return 1
}

# The routers' operator token: random, readable by its owner only (the router refuses
# anything more open). Kept across `up` so that running routers keep accepting it.
make_admin_token() {
	local t=$dir/admin-token
	[ -s "$t" ] || (umask 077 && head -c 32 /dev/urandom | base64 -w0 >"$t")
	chmod 600 "$t"
}

# POST /$1?name=$2 on the admin listener of router $3, or of the first router that
# answers. The token goes to curl on stdin, not on its command line.
admin_post() {
	local t=$dir/admin-token r rc out
	[[ "$2" =~ ^[A-Za-z0-9._-]+$ ]] || die "$1 NAME: a member name"
	[ -f "$t" ] || die "no $t (run up first)"
	for r in ${3:-${routers[@]}}; do
		[[ " ${routers[*]} " == *" $r "* ]] || die "no router '$r' (one of: ${routers[*]})"
		rc=0
		out=$(printf 'Authorization: Bearer %s\n' "$(cat "$t")" | curl -sS --max-time 10 \
			--fail-with-body -H @- -X POST "http://127.0.0.1:$(router_admin "$r")/$1?name=$2" 2>&1) || rc=$?
		# 7: nothing listens there (that router is down): try the next one.
		[ $rc = 7 ] && continue
		echo "$r: $out"
		return $rc
	done
	die "no router's admin listener answers"
}

cmd_up() {
	ensure_built
	write_config
	make_admin_token
	make_all_certs
	make_redis_conf
	start_one redis
	wait_port 127.0.0.1 "$port_redis" 10 || die "redis did not start (see $dir/logs/redis.log)"
	start_one etcd
	wait_port 127.0.0.1 "$port_etcd" 15 || die "etcd did not start (see $dir/logs/etcd.log)"
	setup_etcd_auth
	for r in "${routers[@]}"; do start_one "$r"; done
	for r in "${routers[@]}"; do
		wait_port 127.0.0.1 "$(router_http "$r")" 10 || die "$r did not start (see $dir/logs/$r.log)"
	done
	for n in "${keys_names[@]}" "${inbox_names[@]}" connsrv-0 connsrv-1; do start_one "$n"; done
	wait_healthy || exit 1
	wait_primaries || exit 1
	for i in 0 1; do wait_port 127.0.0.1 "$(conn_client $i)" 10 || die "connsrv-$i is not listening"; done
	if push_on; then
		start_one pushsrv
		wait_port 127.0.0.1 "$port_push_metrics" 10 || die "pushsrv did not start (see $dir/logs/pushsrv.log)"
	fi
	cat <<MSG
Sealpost dev cluster is up (state in $dir).
  . $dir/env
  bin/sealpost --home /tmp/alice register +15550001
  scripts/devcluster.sh otp +15550001
Routers http://127.0.0.1:$port_router_http and http://127.0.0.1:$port_routerb_http (/where, /map, /metrics); connsrvs on 127.0.0.1:$(conn_client 0) and :$(conn_client 1).
Admin (token in $dir/admin-token): scripts/devcluster.sh drain|undrain connsrv-N.
MSG
}

# SIGTERM to each named process that runs, then up to 5 s for them all to exit; the ones
# left get SIGKILL. Their pid files go.
stop_tier() {
	local name f pid pids=() left
	for name in "$@"; do
		f=$(pidfile "$name")
		[ -f "$f" ] || continue
		pid=$(cat "$f")
		running "$pid" && kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
		rm -f "$f"
	done
	for _ in $(seq 50); do
		left=()
		for pid in "${pids[@]}"; do running "$pid" && left+=("$pid"); done
		pids=("${left[@]}")
		[ ${#pids[@]} = 0 ] && return 0
		sleep 0.1
	done
	kill -KILL "${pids[@]}" 2>/dev/null || true
}

cmd_down() {
	[ -d "$dir/pids" ] || { echo "devcluster: nothing running"; return 0; }
	local name s l
	# Tier by tier, front to back (each process takes a second or two under the
	# sanitizers). Every copy name there could be, whatever COPIES is now; "router",
	# "keysrv": the single router and keysrv of older layouts.
	stop_tier pushsrv connsrv-1 connsrv-0
	# Within a group one copy at a time (a primary told to stop while its replicas stop
	# too can wait on them until it is killed); the inbox shards side by side.
	local shards=()
	for s in 0 1 2; do (for l in c b a; do stop_tier "inbox-$s$l"; done) & shards+=($!); done
	wait "${shards[@]}"
	for name in keysrv-{a,b,c} keysrv; do stop_tier "$name"; done
	stop_tier "${routers[@]}" router
	stop_tier etcd
	stop_tier redis
	echo "devcluster: stopped"
}

cmd_status() {
	local name
	for name in "${names[@]}"; do
		if alive "$name"; then echo "$name running (pid $(cat "$(pidfile "$name")"))"; else echo "$name stopped"; fi
	done
	if alive pushsrv; then echo "pushsrv running (pid $(cat "$(pidfile pushsrv)"))"; else echo "pushsrv stopped (push is off without SEALPOST_PUSH_ARGS)"; fi
	# Each router's published map (the same epoch and etcd revision on both), then the
	# members as the first router that answers sees them.
	local r h
	for r in "${routers[@]}"; do
		h=$(curl -sf "http://127.0.0.1:$(router_http "$r")/health" 2>/dev/null |
			jq -r '"epoch=\(.epoch) etcd_revision=\(.etcd_revision // "-") map_writer=\(if has("map_writer") then .map_writer else "-" end)"' 2>/dev/null) || h="no answer"
		echo "  $r map: $h"
	done
	for r in "${routers[@]}"; do
		curl -sf "http://127.0.0.1:$(router_http "$r")/map" 2>/dev/null | jq -r '.members[] | "  \(.name) healthy=\(.healthy)" + (if .role == "connsrv" then " draining=\(.draining // false)" else " primary=\(.primary // false) in_sync=\(.in_sync // false)" end)' 2>/dev/null && break
	done
	echo "keysrv and inbox copies (from each copy's /metrics):"
	local m role epoch applied flushed lag p port
	for name in "${keys_names[@]}" "${inbox_names[@]}"; do
		case $name in keysrv-*) p=keysrv_repl port=$(keys_metrics "$name") ;; *) p=sp_inbox_repl port=$(inbox_metrics "$name") ;; esac
		m=$(curl -sf "http://127.0.0.1:$port/metrics" 2>/dev/null) || { echo "  $name: no answer"; continue; }
		metric() { printf '%s\n' "$m" | awk -v k="$1" '$1 == k {print $2; exit}'; }
		case $(metric ${p}_role) in 1) role=replica ;; 2) role=promoting ;; 3) role=PRIMARY ;; *) role=none ;; esac
		epoch=$(metric ${p}_epoch) applied=$(metric ${p}_applied_lsn)
		flushed=$(metric ${p}_flushed_lsn) lag=$(metric ${p}_lag_ms)
		printf '  %-9s %-9s epoch=%s applied=%s flushed=%s lag_ms=%s\n' "$name" "$role" "$epoch" "$applied" "$flushed" "$lag"
	done
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
logs) if [ -n "${2:-}" ]; then tail -n 100 -f "$dir/logs/$2.log"; else tail -n 20 "$dir"/logs/*.log; fi ;;
restart) [ -n "${2:-}" ] || die "restart NAME"; cmdline "$2" >/dev/null
	f=$(pidfile "$2"); if alive "$2"; then kill -TERM "$(cat "$f")"; sleep 0.5; fi
	# A router's etcd threads may take a second to stop: its ports are free only once it
	# is gone.
	if [[ $2 == router-* ]]; then
		for _ in $(seq 50); do alive "$2" || break; sleep 0.1; done
		alive "$2" && kill -KILL "$(cat "$f")" 2>/dev/null && sleep 0.2
	fi
	rm -f "$f"; start_one "$2"
	wait_port 127.0.0.1 "$(port_of "$2")" 30 || die "$2 did not come back (see $dir/logs/$2.log)" ;;
otp) [ -n "${2:-}" ] || die "otp PHONE"; f="$dir/data/keysrv/otp/$2"
	[ -f "$f" ] || die "no code for $2 (register it first)"; cat "$f"; echo ;;
env) cat "$dir/env" ;;
drain | undrain) [ -n "${2:-}" ] || die "$1 NAME [ROUTER]"; admin_post "$1" "$2" "${3:-}" ;;
*) echo "usage: $0 up|down|status|logs [NAME]|restart NAME|otp PHONE|env|drain NAME [ROUTER]|undrain NAME [ROUTER]" >&2; exit 2 ;;
esac
