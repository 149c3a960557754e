#!/usr/bin/env bash
# Certificates for a Sealpost cluster's internal links (docs/SECURITY.md, "Internal
# links"): a cluster root CA, one intermediate CA per role, and member certificates signed
# by their role's CA. A listener trusts the role CAs it serves (nng 1.5 does not show it
# the peer's subject, so the CA is the role); etcd trusts the root.
#
#   scripts/certs.sh DIR root                      DIR/root-ca.pem, root-ca.key
#   scripts/certs.sh DIR role ROLE                 DIR/ROLE-ca.pem, ROLE-ca.key (signed by the root)
#   scripts/certs.sh DIR member ROLE NAME [SAN..]  DIR/NAME.pem (its certificate, then ROLE's CA),
#                                                  DIR/NAME.key; SAN entries like IP:10.0.0.1 or
#                                                  DNS:inbox-0a (default IP:127.0.0.1,DNS:localhost)
#   scripts/certs.sh DIR etcd-client ROLE NAME     DIR/NAME-etcd.pem, .key: a client certificate for
#                                                  etcd with no common name (etcd's JSON gateway
#                                                  refuses one once authentication is on: the
#                                                  member logs in as its role's user instead)
#   scripts/certs.sh DIR bundle NAME ROLE...       DIR/NAME.pem: the role CAs' certificates, for
#                                                  --internal-ca, --internal-client-ca and
#                                                  --repl-peer-ca (rewritten every time)
#
# Existing files are kept (so the command is safe to repeat); keys are mode 0600. EC P-256,
# valid for DAYS days (default 825). Needs only openssl.
set -euo pipefail

usage() {
	sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

[ $# -ge 2 ] || usage
dir=$1 what=$2
shift 2
days=${DAYS:-825}
umask 077
mkdir -p "$dir"

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

case $what in
root)
	[ -f "$dir/root-ca.pem" ] && exit 0
	newkey "$dir/root-ca.key"
	openssl req -x509 -new -key "$dir/root-ca.key" -days "$days" -subj "/CN=Sealpost cluster root CA" \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
		-out "$dir/root-ca.pem" 2>/dev/null
	;;
role)
	[ $# -eq 1 ] || usage
	role=$1
	[[ $role =~ ^[a-z][a-z0-9-]*$ ]] || { echo "certs.sh: bad role '$role'" >&2; exit 2; }
	[ -f "$dir/root-ca.pem" ] || { echo "certs.sh: make the root first" >&2; exit 2; }
	[ -f "$dir/$role-ca.pem" ] && exit 0
	newkey "$dir/$role-ca.key"
	ext=$(mktemp)
	printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n' >"$ext"
	openssl req -new -key "$dir/$role-ca.key" -subj "/CN=Sealpost $role CA" 2>/dev/null |
		openssl x509 -req -CA "$dir/root-ca.pem" -CAkey "$dir/root-ca.key" -CAcreateserial \
			-days "$days" -extfile "$ext" -out "$dir/$role-ca.pem" 2>/dev/null
	rm -f "$ext"
	;;
member)
	[ $# -ge 2 ] || usage
	role=$1 name=$2
	shift 2
	[[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || { echo "certs.sh: bad name '$name'" >&2; exit 2; }
	[ -f "$dir/$role-ca.pem" ] || { echo "certs.sh: make the role CA '$role' first" >&2; exit 2; }
	[ -f "$dir/$name.pem" ] && exit 0
	san="IP:127.0.0.1,DNS:localhost"
	[ $# -gt 0 ] && san=$(IFS=,; echo "$*")
	newkey "$dir/$name.key"
	ext=$(mktemp)
	printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' "$san" >"$ext"
	openssl req -new -key "$dir/$name.key" -subj "/CN=$name/OU=$role" 2>/dev/null |
		openssl x509 -req -CA "$dir/$role-ca.pem" -CAkey "$dir/$role-ca.key" -CAcreateserial \
			-days "$days" -extfile "$ext" -out "$dir/$name.crt" 2>/dev/null
	cat "$dir/$name.crt" "$dir/$role-ca.pem" >"$dir/$name.pem"
	rm -f "$ext" "$dir/$name.crt"
	;;
etcd-client)
	[ $# -eq 2 ] || usage
	role=$1 name=$2
	[[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || { echo "certs.sh: bad name '$name'" >&2; exit 2; }
	[ -f "$dir/$role-ca.pem" ] || { echo "certs.sh: make the role CA '$role' first" >&2; exit 2; }
	[ -f "$dir/$name-etcd.pem" ] && exit 0
	newkey "$dir/$name-etcd.key"
	ext=$(mktemp)
	printf 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n' >"$ext"
	openssl req -new -key "$dir/$name-etcd.key" -subj "/O=Sealpost/OU=$role" 2>/dev/null |
		openssl x509 -req -CA "$dir/$role-ca.pem" -CAkey "$dir/$role-ca.key" -CAcreateserial \
			-days "$days" -extfile "$ext" -out "$dir/$name-etcd.crt" 2>/dev/null
	cat "$dir/$name-etcd.crt" "$dir/$role-ca.pem" >"$dir/$name-etcd.pem"
	rm -f "$ext" "$dir/$name-etcd.crt"
	;;
bundle)
	[ $# -ge 2 ] || usage
	name=$1
	shift
	[[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || { echo "certs.sh: bad name '$name'" >&2; exit 2; }
	for role in "$@"; do
		[ -f "$dir/$role-ca.pem" ] || { echo "certs.sh: make the role CA '$role' first" >&2; exit 2; }
	done
	tmp=$(mktemp "$dir/.bundle.XXXXXX")
	for role in "$@"; do cat "$dir/$role-ca.pem"; done >"$tmp"
	chmod 0644 "$tmp"
	mv "$tmp" "$dir/$name.pem"
	;;
*) usage ;;
esac
