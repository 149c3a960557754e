#!/usr/bin/env bash
# The deploy files (deploy/compose, deploy/systemd) against the binaries as they are:
#  - scripts/deploy-certs.sh makes every certificate, bundle and secret they name: member
#    certificates naming their member, etcd client certificates (<member>-etcd.pem) with no
#    common name, both chaining to the root, and the etcd users' passwords (mode 600);
#  - `docker-compose config` accepts the compose file (no daemon needed) and refuses it
#    without SEALPOST_OTP_WEBHOOK_URL;
#  - every server command line (compose `command`, each systemd ExecStart with its example
#    INI file) is accepted option by option by the binary itself: the line is run with a
#    sentinel option appended, and the only error allowed is the sentinel's (sp_config
#    reads the INI file, the environment and every flag in order before it starts
#    anything), and the SEALPOST_<PROG>_* variables name real options;
#  - every internal URL is tls+tcp:// (etcd and the OTP webhook https://), nothing has
#    --insecure-internal, each process has the TLS, etcd and replication options its links
#    need, and each file it names is one deploy-certs.sh writes and is mounted where said;
#  - every router, keysrv and inbox copy logs in to etcd as its role's user (router, keys,
#    inbox-<its shard>) with <its name>-etcd.pem and that user's password file, the only
#    one compose mounts into it; compose runs etcd with a low --bcrypt-cost and the
#    one-shot etcd-auth service (scripts/etcd-auth.sh, in the image with etcdctl) for the
#    same etcd, cluster, shards and passwords;
#  - compose publishes only the routers' public HTTP and the connsrvs' client ports, and the
#    cluster files list every member (keysrv-a/b/c as role keysrv) at the address it serves;
#  - Redis started on loopback with the generated redis.conf admits only user sealpost,
#    and only to route keys; etcd knows every flag compose gives it;
#  - `systemd-analyze verify` accepts every unit instance (skipped with a note if missing).
# Stops only the Redis it starts, by PID.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${SP_BIN:-bin}
[[ "$bin" = /* ]] || bin=$root/$bin
tmp=$(mktemp -d /tmp/sp-deploy-XXXXXX)
redis_pid=
cleanup() {
	if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

for b in router keysrv inboxsrv connsrv; do [ -x "$bin/$b" ] || { echo "FAIL: no $bin/$b (make all)"; exit 1; }; done
command -v docker-compose >/dev/null || { echo "FAIL: docker-compose missing (scripts/deps.sh)"; exit 1; }

# 1. The secrets, with the member names the deploy files use.
"$root/scripts/deploy-certs.sh" "$tmp/secrets" >"$tmp/certs.log" 2>&1 || { cat "$tmp/certs.log"; echo "FAIL: deploy-certs.sh"; exit 1; }
for f in admin-token redis-password redis.conf; do
	[ "$(stat -c %a "$tmp/secrets/$f")" = 600 ] || fail "secrets/$f is not mode 600"
done
ls "$tmp/secrets/internal" | grep -E -- '-ca\.key$' && fail "a CA key in secrets/internal (mounted into every server)"
# Every member certificate chains to the root through its role CA and names its member;
# every etcd client certificate (<member>-etcd.pem) chains to the root and has no common
# name (etcd's JSON gateway refuses one once authentication is on).
netcd=0
for p in "$tmp"/secrets/internal/*.pem; do
	n=$(basename "$p" .pem)
	[ -f "$tmp/secrets/internal/$n.key" ] || continue
	openssl verify -CAfile "$tmp/secrets/internal/root-ca.pem" -untrusted "$p" "$p" >/dev/null 2>&1 ||
		fail "$n.pem does not chain to root-ca.pem"
	if [[ $n == *-etcd ]]; then
		netcd=$((netcd + 1))
		subj=$(openssl x509 -in "$p" -noout -subject -nameopt RFC2253 2>/dev/null) || fail "$n.pem unreadable"
		[[ $subj == *CN=* ]] && fail "$n.pem has a common name ($subj)"
		[ -f "$tmp/secrets/internal/${n%-etcd}.pem" ] || fail "$n.pem is no member's"
		continue
	fi
	[[ $(openssl x509 -in "$p" -noout -ext subjectAltName 2>/dev/null) =~ DNS:$n(,|$) ]] || fail "$n.pem lacks DNS:$n"
done
[ "$netcd" = 14 ] || fail "$netcd etcd client certificates, not 14 (2 routers, 3 keysrvs, 9 inbox copies)"
[ "$(stat -c %a "$tmp/secrets/etcd-users")" = 700 ] || fail "secrets/etcd-users is not mode 700"
for u in root keys router inbox-0 inbox-1 inbox-2; do
	f=$tmp/secrets/etcd-users/$u
	[ -s "$f" ] || { fail "no etcd password secrets/etcd-users/$u"; continue; }
	[ "$(stat -c %a "$f")" = 600 ] || fail "secrets/etcd-users/$u is not mode 600"
	[[ $(cat "$f") =~ ^[0-9a-f]{48}$ ]] || fail "secrets/etcd-users/$u is not 24 random bytes in hex"
done
# Repeating it keeps the passwords (etcd knows them by then).
cp -r "$tmp/secrets/etcd-users" "$tmp/etcd-users.before"
"$root/scripts/deploy-certs.sh" "$tmp/secrets" >"$tmp/certs.log" 2>&1 || { cat "$tmp/certs.log"; echo "FAIL: deploy-certs.sh again"; exit 1; }
diff -r "$tmp/etcd-users.before" "$tmp/secrets/etcd-users" >/dev/null || fail "deploy-certs.sh changed etcd passwords on a second run"

# The image runs scripts/etcd-auth.sh (compose's etcd-auth service) and has etcdctl for it.
df=$root/deploy/compose/Dockerfile
sed -n '/^FROM debian:12$/,$p' "$df" | grep -q -- 'etcd-client' || fail "the runtime image lacks etcd-client (etcdctl)"
grep -qx 'COPY scripts/etcd-auth.sh /usr/local/share/sealpost/etcd-auth.sh' "$df" ||
	fail "the image lacks /usr/local/share/sealpost/etcd-auth.sh"

# 2. docker-compose resolves the file (anchors, interpolation) without a daemon.
compose=$root/deploy/compose/docker-compose.yml
env -u SEALPOST_OTP_WEBHOOK_URL docker-compose -f "$compose" config -q >/dev/null 2>&1 &&
	fail "compose accepted without SEALPOST_OTP_WEBHOOK_URL"
if ! SEALPOST_OTP_WEBHOOK_URL=https://sms.example/hook docker-compose -f "$compose" config -q 2>"$tmp/dc.err"; then
	cat "$tmp/dc.err"; fail "docker-compose config -q"
fi
SEALPOST_OTP_WEBHOOK_URL=https://sms.example/hook docker-compose -f "$compose" config >"$tmp/compose.yml" 2>"$tmp/dc.err" ||
	{ cat "$tmp/dc.err"; echo "FAIL: docker-compose config"; exit 1; }

# 3. No deploy file may let a link go plain (the README may say so).
if grep -rn --exclude='*.md' -- '--insecure-internal\|insecure-internal *=\|INSECURE_INTERNAL' "$root/deploy"; then
	fail "--insecure-internal in deploy/"
fi

# 4-6: the command lines, the cluster files, the ports (python3: YAML and INI parsing).
python3 - "$root" "$bin" "$tmp" <<'PY' || fails=$((fails + 1))
import configparser, glob, os, re, shlex, subprocess, sys
import yaml

root, binDir, tmp = sys.argv[1:4]
secrets = os.path.join(tmp, "secrets")
SENTINEL = "--zz-deploy-files-sentinel"
fails = []

def fail(msg):
    fails.append(msg)
    print("FAIL: " + msg)

helpcache = {}
def options(prog):
    if prog not in helpcache:
        out = subprocess.run([os.path.join(binDir, prog), "--help"], capture_output=True, text=True).stdout
        helpcache[prog] = set(re.findall(r"^  --([a-z0-9-]+)", out, re.M))
    return helpcache[prog]

def accepted(prog, args, env, ini=None):
    """'' when the binary parses INI, environment and flags; its error otherwise."""
    cmd = [os.path.join(binDir, prog)] + (["--config", ini] if ini else []) + args + [SENTINEL]
    e = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    e.update(env)
    r = subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=20)
    if r.returncode != 0 and "unknown option '%s'" % SENTINEL in r.stderr:
        return ""
    return (r.stderr.strip() or r.stdout.strip() or "exit %d" % r.returncode)[:300]

# The checker must itself catch a wrong option, a wrong value and a wrong INI key, and
# pass a right one.
with open(os.path.join(tmp, "bad.ini"), "w") as f:
    f.write("repl-advertize = tls+tcp://x:1\n")
for what, ok in (("an unknown option", accepted("router", ["--internal-cax", "x"], {}) != ""),
                 ("a bad number", accepted("keysrv", ["--min-copies", "two"], {}) != ""),
                 ("an unknown INI key", accepted("inboxsrv", [], {}, os.path.join(tmp, "bad.ini")) != ""),
                 ("a right option", accepted("router", ["--admin-port", "7203"], {}) == "")):
    if not ok:
        fail("checker: wrong answer for " + what)

def flags(args):
    """{option: value} of a flag list (a bare flag or --k=v counts)."""
    d, i = {}, 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            k = a[2:]
            if "=" in k:
                k, v = k.split("=", 1)
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                v = args[i + 1]; i += 1
            else:
                v = "true"
            d[k] = v
        i += 1
    return d

def read_ini(path):
    cp = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=None,
                                   comment_prefixes=(";", "#"))
    with open(path) as f:
        cp.read_string("[top]\n" + f.read())
    return cp

def ini_flags(path, prog):
    cp = read_ini(path)
    d = dict(cp["top"])
    if cp.has_section(prog):
        d.update(cp[prog])
    return d

def env_flags(prog, env):
    d = {}
    pre = "SEALPOST_%s_" % prog.upper()
    for k, v in env.items():
        if not k.startswith("SEALPOST_"):
            continue
        if not k.startswith(pre) or k[len(pre):].lower().replace("_", "-") not in options(prog):
            fail("%s: environment %s is not an option of %s" % (prog, k, prog))
            continue
        d[k[len(pre):].lower().replace("_", "-")] = v
    return d

def etcd_user(prog, opts):
    """The etcd user of a server (scripts/etcd-auth.sh)."""
    return {"router": "router", "keysrv": "keys"}.get(prog) or "inbox-%s" % opts.get("shard")

INTERNAL = {"listen", "publish", "pull", "advertise", "router", "router-pub", "repl-listen", "repl-advertise"}

def check_process(label, prog, opts, path_ok):
    """Static checks on the merged options of one server."""
    for k, v in opts.items():
        for url in re.findall(r"[a-z+]+://[^,\s]*", v):
            scheme = url.split("://")[0]
            if k in ("etcd", "otp-webhook-url"):
                if scheme != "https":
                    fail("%s: --%s %s is not https://" % (label, k, url))
            elif scheme != "tls+tcp":
                fail("%s: --%s %s is not tls+tcp://" % (label, k, url))
        if k in INTERNAL and not (prog == "connsrv" and k == "listen") and "://" not in v:
            fail("%s: --%s %s has no tls+tcp:// scheme" % (label, k, v))
        if v.startswith("/etc/sealpost/") or v.startswith(tmp):
            why = path_ok(v)
            if why:
                fail("%s: --%s %s: %s" % (label, k, v, why))
    need = ["internal-cert", "internal-key", "internal-ca", "internal-client-ca"]
    if prog in ("router", "keysrv", "inboxsrv"):
        need += ["etcd", "etcd-ca", "etcd-cert", "etcd-key"]
    if prog in ("keysrv", "inboxsrv"):
        need += ["name", "repl-listen", "repl-advertise", "repl-peer-ca", "router", "router-pub"]
        if opts.get("min-copies") != "2":
            fail("%s: --min-copies is %s, not 2" % (label, opts.get("min-copies")))
    if prog == "keysrv":
        need += ["otp-webhook-url"]
        if opts.get("production") != "true" or opts.get("otp-sender") != "webhook":
            fail("%s: not --production --otp-sender webhook" % label)
    if prog == "inboxsrv":
        need += ["shard"]
    if prog == "connsrv":
        need += ["name", "advertise", "router", "router-pub", "redis-user", "redis-password-file", "cert", "key"]
    if prog == "router":
        need += ["cluster-file", "admin-token-file"]
        if opts.get("public-map") != "false":
            fail("%s: /map public (needs --public-map=false)" % label)
    for k in need:
        if not opts.get(k):
            fail("%s: no --%s" % (label, k))
    if prog in ("keysrv", "inboxsrv") and opts.get("name", "") not in opts.get("repl-advertise", ""):
        fail("%s: --repl-advertise %s does not name %s" % (label, opts.get("repl-advertise"), opts.get("name")))
    name = opts.get("name")
    if prog in ("router", "keysrv", "inboxsrv"):
        # Its own etcd client certificate (no common name) and its role's etcd user.
        member = name or os.path.basename(opts.get("internal-cert", "")).rsplit(".pem", 1)[0]
        for k, ext in (("etcd-cert", ".pem"), ("etcd-key", ".key")):
            if os.path.basename(opts.get(k, "")) != member + "-etcd" + ext:
                fail("%s: --%s %s is not %s-etcd%s" % (label, k, opts.get(k), member, ext))
        user = etcd_user(prog, opts)
        if opts.get("etcd-user") != user:
            fail("%s: --etcd-user %s, not %s" % (label, opts.get("etcd-user"), user))
        if not opts.get("etcd-password-file"):
            fail("%s: no --etcd-password-file" % label)
    elif opts.get("etcd-user") or opts.get("etcd-password-file"):
        fail("%s: %s has no etcd user" % (label, prog))
    if name and opts.get("internal-cert") and os.path.basename(opts["internal-cert"]) != name + ".pem":
        fail("%s: --internal-cert %s is not %s's" % (label, opts["internal-cert"], name))

def internal_file(p):
    return None if os.path.isfile(os.path.join(secrets, "internal", os.path.basename(p))) else \
        "not written by scripts/deploy-certs.sh"

def check_cluster(label, path, members):
    """members: {name: (role, url the member serves at)}."""
    cp = read_ini(path)
    secs = [s for s in cp.sections() if s != "top"]
    for s in secs:
        addr = cp[s].get("addr", "")
        if not addr.startswith("tls+tcp://"):
            fail("%s [%s]: addr %s is not tls+tcp://" % (label, s, addr))
        if s not in members:
            fail("%s [%s]: no such process" % (label, s))
            continue
        role, url = members[s]
        if cp[s].get("role") != role:
            fail("%s [%s]: role %s, not %s" % (label, s, cp[s].get("role"), role))
        if url and addr != url:
            fail("%s [%s]: addr %s, but it serves %s" % (label, s, addr, url))
        if role == "inbox" and cp[s].get("shard") != s[len("inbox-")]:
            fail("%s [%s]: shard %s" % (label, s, cp[s].get("shard")))
    for m in members:
        if m not in secs:
            fail("%s: %s missing" % (label, m))
    if sorted(s for s in secs if cp[s].get("role") == "keysrv") != ["keysrv-a", "keysrv-b", "keysrv-c"]:
        fail("%s: the key store copies are not keysrv-a/b/c" % label)

# ---- compose ----
with open(os.path.join(tmp, "compose.yml")) as f:
    comp = yaml.safe_load(f)
cdir = os.path.join(root, "deploy", "compose")
public = {"router-a": "http-port", "router-b": "http-port", "connsrv-0": "listen", "connsrv-1": "listen"}
members = {}
etcd_logins = []
for name, svc in comp["services"].items():
    cmd = svc.get("command") or []
    if isinstance(cmd, str):
        cmd = shlex.split(cmd)
    if svc.get("network_mode") == "host":
        fail("compose %s: network_mode host publishes every port" % name)
    for p in svc.get("ports", []):
        target = str(p.get("target") if isinstance(p, dict) else str(p).split(":")[-1]).split("/")[0]
        if name not in public:
            fail("compose %s publishes %s (internal)" % (name, p))
            continue
        o = flags(cmd[1:])
        port = o.get(public[name], "").rsplit(":", 1)[-1]
        if target != port:
            fail("compose %s publishes %s, not its public port %s" % (name, target, port))
    if name in public and not svc.get("ports"):
        fail("compose %s publishes nothing" % name)
    if not cmd or cmd[0] not in ("router", "keysrv", "inboxsrv", "connsrv"):
        continue
    prog = cmd[0]
    env = {k: "" if v is None else str(v) for k, v in (svc.get("environment") or {}).items()}
    err = accepted(prog, cmd[1:], env)
    if err:
        fail("compose %s: %s refuses its command line: %s" % (name, prog, err))
    mounts = []
    for v in svc.get("volumes", []):
        if isinstance(v, dict):
            src, dst = v.get("source", ""), v.get("target", "")
        else:
            parts = v.split(":")
            src, dst = parts[0], parts[1]
        mounts.append((src, dst))

    def path_ok(p):
        for src, dst in mounts:
            if p == dst or p.startswith(dst + "/"):
                if not src.startswith("/"):
                    return None  # a named volume
                rel = os.path.relpath(src, cdir)
                if rel.startswith("secrets"):
                    host = os.path.join(tmp, rel) + p[len(dst):]
                    return None if os.path.exists(host) else "%s is not written by deploy-certs.sh" % os.path.relpath(host, tmp)
                if rel == "certs":
                    return None  # the operator's TLS pair
                return None if os.path.exists(src + p[len(dst):]) else "missing on the host"
        return "not on any mount"

    opts = flags(cmd[1:])
    opts.update({k: v for k, v in env_flags(prog, env).items() if k not in opts})
    check_process("compose " + name, prog, opts, path_ok)
    # Least privilege: the one password file of its role, mounted at --etcd-password-file.
    pw = [os.path.relpath(src, cdir) for src, dst in mounts
          if src.startswith("/") and os.path.relpath(src, cdir).startswith("secrets/etcd-users")]
    if prog == "connsrv":
        if pw:
            fail("compose %s mounts etcd passwords %s" % (name, pw))
    else:
        want = "secrets/etcd-users/" + etcd_user(prog, opts)
        if pw != [want]:
            fail("compose %s mounts etcd passwords %s, not just %s" % (name, pw, want))
        elif not any(dst == opts.get("etcd-password-file") and os.path.relpath(src, cdir) == want
                     for src, dst in mounts):
            fail("compose %s: --etcd-password-file %s is not %s" % (name, opts.get("etcd-password-file"), want))
        etcd_logins.append((name, opts.get("etcd"), opts.get("etcd-cluster", "sealpost"), opts.get("shard")))
    if prog != "router" and opts.get("name") != name:
        fail("compose %s: --name %s" % (name, opts.get("name")))
    role = {"keysrv": "keysrv", "inboxsrv": "inbox", "connsrv": "connsrv"}.get(prog)
    if role:
        port = opts.get("advertise" if prog == "connsrv" else "listen", "").rsplit(":", 1)[-1]
        members[name] = (role, "tls+tcp://%s:%s" % (name, port))
        if prog == "connsrv" and opts.get("advertise") != members[name][1]:
            fail("compose %s: --advertise %s" % (name, opts.get("advertise")))
    if prog == "router":
        cf = opts.get("cluster-file", "")
        if not any(dst == cf and src == os.path.join(cdir, "cluster.ini") for src, dst in mounts):
            fail("compose %s: --cluster-file %s is not deploy/compose/cluster.ini" % (name, cf))
for want in ["router-a", "router-b", "keysrv-a", "keysrv-b", "keysrv-c", "connsrv-0", "connsrv-1"] + \
        ["inbox-%d%s" % (s, c) for s in range(3) for c in "abc"]:
    if want not in comp["services"]:
        fail("compose: no service %s" % want)
check_cluster("compose cluster.ini", os.path.join(cdir, "cluster.ini"), members)
for s in range(3):
    for c in "abc":
        n = "inbox-%d%s" % (s, c)
        if n in comp["services"] and flags(comp["services"][n]["command"][1:]).get("shard") != str(s):
            fail("compose %s: not shard %d" % (n, s))
# Redis: the generated config, with the ACL user; etcd: https with client certificates.
redis = comp["services"].get("redis", {})
if not any(str(v).split(":")[0] == "./secrets/redis.conf" or "secrets/redis.conf" in str(v) for v in redis.get("volumes", [])):
    fail("compose redis does not load secrets/redis.conf")
etcd = comp["services"].get("etcd", {})
ecmd = etcd.get("command") or []
eo = flags(ecmd[1:])
etcd_help = subprocess.run(["etcd", "--help"], capture_output=True, text=True).stdout + \
    subprocess.run(["etcd", "--help"], capture_output=True, text=True).stderr
for k in eo:
    if not re.search(r"--%s\b" % re.escape(k), etcd_help):
        fail("compose etcd: etcd has no --%s" % k)
for k in ("listen-client-urls", "advertise-client-urls"):
    if not eo.get(k, "").startswith("https://"):
        fail("compose etcd: --%s %s is not https://" % (k, eo.get(k)))
if eo.get("client-cert-auth") != "true" or "root-ca.pem" not in eo.get("trusted-ca-file", ""):
    fail("compose etcd: no client certificates of the cluster root required")
for k in ("cert-file", "key-file", "trusted-ca-file"):
    if not internal_file(eo.get(k, "")) is None:
        fail("compose etcd: --%s %s not written by deploy-certs.sh" % (k, eo.get(k)))
# Random passwords need no slow bcrypt: at the default cost 10 the servers' logins at once
# keep etcd busy for tens of seconds.
if not re.fullmatch(r"[4-9]", eo.get("bcrypt-cost", "")):
    fail("compose etcd: --bcrypt-cost %s (want 4..9)" % eo.get("bcrypt-cost"))
# The one-shot etcd-auth: scripts/etcd-auth.sh for the etcd, cluster, shards and password
# files the servers use, with the operator's certificate, restarted until it succeeds.
ea = comp["services"].get("etcd-auth")
if not ea:
    fail("compose: no etcd-auth service")
else:
    acmd = ea.get("command") or []
    if isinstance(acmd, str):
        acmd = shlex.split(acmd)
    if acmd[:1] == ["bash"]:
        acmd = acmd[1:]
    if ea.get("image") != "sealpost:latest" or ea.get("restart") != "on-failure":
        fail("compose etcd-auth: not the sealpost image with restart on-failure")
    if "etcd" not in (ea.get("depends_on") or []):
        fail("compose etcd-auth: does not depend on etcd")
    if len(acmd) != 7 or acmd[0] != "/usr/local/share/sealpost/etcd-auth.sh":
        fail("compose etcd-auth: command %s is not etcd-auth.sh with its 6 arguments" % acmd)
    else:
        ep, certdir, admin, cluster, shards, userdir = acmd[1:]
        amounts = {}
        for v in ea.get("volumes", []):
            src, dst = (v.get("source", ""), v.get("target", "")) if isinstance(v, dict) else v.split(":")[:2]
            amounts[dst] = os.path.relpath(src, cdir) if src.startswith("/") else src
        for f in ("root-ca.pem", admin + ".pem", admin + ".key"):
            src = amounts.get(certdir + "/" + f)
            if src != "secrets/internal/" + f or not os.path.isfile(os.path.join(tmp, src)):
                fail("compose etcd-auth: %s/%s is not deploy-certs.sh's %s (%s)" % (certdir, f, f, src))
        if amounts.get(userdir) != "secrets/etcd-users":
            fail("compose etcd-auth: %s is not secrets/etcd-users" % userdir)
        others = [d for d, s in amounts.items() if d != userdir and not d.startswith(certdir + "/")]
        if others:
            fail("compose etcd-auth: mounts more than it needs: %s" % others)
        # etcdctl logs in by the certificate's common name: the user etcd-auth.sh makes.
        subj = subprocess.run(["openssl", "x509", "-in", os.path.join(secrets, "internal", admin + ".pem"),
                               "-noout", "-subject", "-nameopt", "RFC2253"], capture_output=True, text=True).stdout
        if not re.search(r"CN=%s(,|$)" % re.escape(admin), subj.strip()):
            fail("compose etcd-auth: %s.pem's subject %s does not name %s" % (admin, subj.strip(), admin))
        nshards = len({s for _, _, _, s in etcd_logins if s is not None})
        if shards != str(nshards):
            fail("compose etcd-auth: %s shards, compose runs %d" % (shards, nshards))
        for n, e, cl, _ in etcd_logins:
            if e != ep or cl != cluster:
                fail("compose %s: etcd %s cluster %s, etcd-auth sets up %s cluster %s" % (n, e, cl, ep, cluster))

# ---- systemd ----
sdir = os.path.join(root, "deploy", "systemd")
cred = os.path.join(tmp, "credentials")
os.makedirs(cred, exist_ok=True)
sys_members = {}
for unit in sorted(glob.glob(os.path.join(sdir, "*.service"))):
    uname = os.path.basename(unit)
    with open(unit) as f:
        text = f.read()
    execs = re.findall(r"^ExecStart=(.*)$", text, re.M)
    creds = dict(re.findall(r"^LoadCredential=([^:]+):(.*)$", text, re.M))
    if len(execs) != 1:
        fail("%s: %d ExecStart lines" % (uname, len(execs)))
        continue
    argv = shlex.split(execs[0])
    prog = os.path.basename(argv[0])
    if argv[0] != "/usr/local/bin/" + prog or prog not in ("router", "keysrv", "inboxsrv", "connsrv"):
        fail("%s: ExecStart runs %s" % (uname, argv[0]))
        continue
    o = flags(argv[1:])
    conf = o.get("config", "")
    m = re.fullmatch(r"/etc/sealpost/(.*)%i\.ini", conf)
    if not m:
        fail("%s: --config %s is not /etc/sealpost/<x>%%i.ini" % (uname, conf))
        continue
    examples = sorted(glob.glob(os.path.join(sdir, "examples", m.group(1) + "*.ini")))
    if not examples:
        fail("%s: no example %s<instance>.ini in deploy/systemd/examples" % (uname, m.group(1)))
    for ex in examples:
        inst = os.path.basename(ex)[len(m.group(1)):-4]
        args = [a.replace("%i", inst).replace("%d", cred) for a in argv[1:]]
        i = args.index("--config")
        del args[i:i + 2]
        label = "%s (instance %s, %s)" % (uname, inst, os.path.basename(ex))
        err = accepted(prog, args, {}, ex)
        if err:
            fail("%s: %s refuses it: %s" % (label, prog, err))
        opts = ini_flags(ex, prog)
        opts.update(flags(args))

        def path_ok(p):
            if p.startswith(cred + "/"):
                return None if os.path.basename(p) in creds else "no LoadCredential= of that name"
            if p.startswith("/etc/sealpost/internal/"):
                return internal_file(p)
            if p.startswith("/etc/sealpost/etcd-users/"):
                return None if os.path.isfile(os.path.join(secrets, "etcd-users", os.path.basename(p))) else \
                    "not written by scripts/deploy-certs.sh"
            if p.startswith("/var/lib/sealpost/"):
                return None
            return None if p.startswith("/etc/sealpost/") else "outside /etc/sealpost"
        check_process(label, prog, opts, path_ok)
        if prog != "connsrv":
            want = "/etc/sealpost/etcd-users/" + etcd_user(prog, opts)
            if opts.get("etcd-password-file") != want:
                fail("%s: --etcd-password-file %s, not %s" % (label, opts.get("etcd-password-file"), want))
        for c, src in creds.items():
            if os.path.basename(src) not in ("router-admin-token", "redis-password"):
                fail("%s: credential %s from %s" % (label, c, src))
        role = {"keysrv": "keysrv", "inboxsrv": "inbox", "connsrv": "connsrv"}.get(prog)
        if role:
            sys_members[opts["name"]] = (role, None)
        if prog == "router" and opts.get("cluster-file") != "/etc/sealpost/cluster.ini":
            fail("%s: cluster-file %s" % (label, opts.get("cluster-file")))
# The example cluster file: every member of the layout, tls+tcp://.
layout = {n: ("keysrv", None) for n in ("keysrv-a", "keysrv-b", "keysrv-c")}
layout.update({"inbox-%d%s" % (s, c): ("inbox", None) for s in range(3) for c in "abc"})
layout.update({"connsrv-%d" % i: ("connsrv", None) for i in range(2)})
for n in sys_members:
    if n not in layout:
        fail("systemd example member %s is not in the layout deploy-certs.sh serves" % n)
check_cluster("systemd examples/cluster.ini", os.path.join(sdir, "examples", "cluster.ini"), layout)

print("python checks: %d failures" % len(fails))
sys.exit(1 if fails else 0)
PY

# 7. The generated redis.conf on loopback: only user sealpost, only route keys.
port=
for _ in 1 2 3 4 5 6 7 8 9 10; do
	p=$((20000 + RANDOM % 20000))
	(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { port=$p; break; }
done
[ -n "$port" ] || { echo "FAIL: no free port"; exit 1; }
mkdir -p "$tmp/redis"
sed -e "s/^port .*/port $port/" -e "s/^bind .*/bind 127.0.0.1/" "$tmp/secrets/redis.conf" >"$tmp/redis/redis.conf"
echo "dir $tmp/redis" >>"$tmp/redis/redis.conf"
redis-server "$tmp/redis/redis.conf" >"$tmp/redis/log" 2>&1 &
redis_pid=$!
for ((i = 0; i < 100; i++)); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
pw=$(cat "$tmp/secrets/redis-password")
rc() { redis-cli -p "$port" --no-auth-warning "$@" 2>&1; }
[ "$(rc --user sealpost --pass "$pw" SET r:dev1 conn-0)" = OK ] || fail "redis: user sealpost cannot write a route"
[[ $(rc --user sealpost --pass "$pw" SET other 1) == *NOPERM* ]] || fail "redis: user sealpost may write outside r:*"
[[ $(rc --user sealpost --pass "$pw" FLUSHALL) == *NOPERM* ]] || fail "redis: user sealpost may FLUSHALL"
[[ $(rc GET r:dev1) == *NOAUTH* ]] || fail "redis: the default user is on"
[[ $(rc --user sealpost --pass wrong GET r:dev1) == *NOAUTH* ]] || fail "redis: a wrong password is accepted"
kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true; redis_pid=

# 8. systemd-analyze verify, each unit as the instances the examples name.
if command -v systemd-analyze >/dev/null; then
	mkdir -p "$tmp/units"
	for inst in router@a router@b keysrv@a keysrv@b keysrv@c inboxsrv@inbox-0a connsrv@0; do
		u=sealpost-${inst%@*}@.service
		sed "s|/usr/local/bin/|$bin/|" "$root/deploy/systemd/$u" >"$tmp/units/sealpost-$inst.service"
	done
	out=$(cd "$tmp/units" && systemd-analyze verify ./*.service 2>&1) || fail "systemd-analyze verify: exit $?"
	[ -z "$out" ] || { echo "$out"; fail "systemd-analyze verify printed warnings"; }
else
	echo "note: systemd-analyze not installed, units not verified"
fi

if [ $fails -gt 0 ]; then echo "$fails failed"; exit 1; fi
echo "deploy files: all checks passed"
