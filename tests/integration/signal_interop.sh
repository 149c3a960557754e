#!/usr/bin/env bash
# Live cross-tests of the C Signal core (bin/spsignal) against the reference npm
# implementations: libsignal@6.0.0 and @privacyresearch/libsignal-protocol-typescript@0.0.16
# (1:1 sessions) and @signalapp/libsignal-client@0.103.0 (Sender Keys).
# Env: SP_BIN (default: bin) holds spsignal. Prints "N passed, M failed"; exits non-zero
# on any failure, or when node/npm are missing.
set -u
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
SP_BIN="${SP_BIN:-bin}"
case "$SP_BIN" in /*) ;; *) SP_BIN="$ROOT/$SP_BIN" ;; esac
SPSIGNAL="$SP_BIN/spsignal"
INTEROP="$ROOT/tests/interop"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
	echo "signal_interop: node and npm are required (install nodejs and npm); cannot run the cross-tests"
	echo "0 passed, 1 failed"
	exit 1
fi
if [ ! -x "$SPSIGNAL" ]; then
	echo "signal_interop: $SPSIGNAL not found; build it with: make bin/spsignal"
	echo "0 passed, 1 failed"
	exit 1
fi
if [ ! -d "$INTEROP/node_modules/libsignal" ] ||
	[ ! -d "$INTEROP/node_modules/@privacyresearch/libsignal-protocol-typescript" ] ||
	[ ! -d "$INTEROP/node_modules/@signalapp/libsignal-client" ]; then
	echo "signal_interop: installing the reference packages (npm ci)"
	if ! (cd "$INTEROP" && npm ci --no-audit --no-fund --loglevel=error >&2); then
		echo "signal_interop: npm ci failed"
		echo "0 passed, 1 failed"
		exit 1
	fi
fi
cd "$INTEROP" && SPSIGNAL="$SPSIGNAL" exec node interop.js
