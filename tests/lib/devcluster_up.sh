# Sourced by the integration scripts: starts a private dev cluster (devcluster.sh at $1,
# state in $SP_DEVCLUSTER_DIR) on a random base port below the ephemeral range, trying
# five bases before it gives up with the end of the last start's log. Exports
# SP_PORT_BASE; on success the caller sources "$SP_DEVCLUSTER_DIR/env".
sp_devcluster_up() {
	local dc=$1 attempt
	for attempt in 1 2 3 4 5; do
		export SP_PORT_BASE=$((10000 + (RANDOM % 220) * 100))
		if "$dc" up >"$SP_DEVCLUSTER_DIR/up.log" 2>&1; then return 0; fi
		"$dc" down >/dev/null 2>&1 || true
	done
	echo "FAIL: cluster did not start"
	tail -n 20 "$SP_DEVCLUSTER_DIR/up.log"
	exit 1
}
