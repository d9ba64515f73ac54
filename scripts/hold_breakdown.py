#!/usr/bin/env python3
"""Where a held connection's server memory goes: holds N idle keep-alive connections (one HTTP
request answered each) on one `serve` process and groups the growth of its resident memory by
mapping kind, from /proc/PID/smaps.

usage: scripts/hold_breakdown.py BIN N [serve options...]
  e.g. scripts/hold_breakdown.py target/release/wamr-coro 9000 --mode direct

Mapping kinds (anonymous private mappings only; the binary and libraries do not grow):
  coroutine stacks  a read-write mapping directly above a one-page PROT_NONE guard whose first
                    8 words are `generator`'s stack sentinel or zero (read through /proc/PID/mem, so
                    run it as root or as the server's user with ptrace allowed)
  malloc heap       [heap], and glibc's per-thread arenas (64 MiB-aligned, 64 MiB reserved)
  other anonymous   everything else: WAMR's linear memories (one mmap each, the module's
                    initial size) and anything else mmapped directly
The script prints the sizes of the read-write mappings of each kind; check them against the
settings (stack size, the guest's memory size).
"""
import collections, re, resource, socket, subprocess, sys, time

binary, n, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
if n + 64 > hard:
    sys.exit(f"RLIMIT_NOFILE {hard} is too low for {n} connections in this process")

REQ = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
p = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--workers", "2", "--max-connections", str(n + 100),
                      "--max-connections-per-ip", "0", "--idle-timeout-ms", "3600000", "--quiet-wamr"] + extra,
                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
addr = p.stdout.readline().strip().split()[-1]
host, port = addr.rsplit(":", 1)

HEAD = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) (\S+) (\S+) (\d+)\s*(.*)$")
ARENA = 64 << 20


def smaps(pid):
    maps, cur = [], None
    for line in open(f"/proc/{pid}/smaps"):
        m = HEAD.match(line)
        if m:
            cur = {"lo": int(m.group(1), 16), "hi": int(m.group(2), 16), "perm": m.group(3),
                   "inode": int(m.group(6)), "name": m.group(7).strip(), "rss": 0}
            maps.append(cur)
        elif line.startswith("Rss:"):
            cur["rss"] = int(line.split()[1])
        elif line.startswith("AnonHugePages:"):
            cur["thp"] = int(line.split()[1])
    return maps


SENTINEL = (0xDEADBEEF).to_bytes(8, "little") * 8
MEM = None


def sentinel(addr):
    """Whether `addr` starts with the words `generator` writes at the bottom of every coroutine
    stack (STACK_SENTINEL, 8 words), or with zeros where `coro::spawn` gave the bottom page back
    while the coroutine runs: what tells a stack from another mapping above a guard page."""
    MEM.seek(addr)
    return MEM.read(64) in (SENTINEL, bytes(64))


def classify(maps):
    """kind -> (rss KiB, mappings, {size KiB: count} of the read-write ones)."""
    out = collections.defaultdict(lambda: [0, 0, collections.Counter()])
    by_lo = {m["lo"]: m for m in maps}
    prev = None
    for m in maps:
        size = (m["hi"] - m["lo"]) // 1024
        if m["name"] == "[heap]":
            kind = "malloc heap"
        elif m["inode"] != 0 or m["name"].startswith("["):
            kind = "files, [stack], vdso"
        elif m["lo"] % ARENA == 0 and m["hi"] - m["lo"] <= ARENA and m["perm"].startswith("rw"):
            kind = "malloc heap"  # a glibc arena's heap: 64 MiB-aligned, the rest of its 64 MiB reserved
        elif m["perm"] == "---p":
            kind = "guard pages (no RSS)"
        elif prev is not None and prev["perm"] == "---p" and prev["hi"] == m["lo"] and prev["hi"] - prev["lo"] == 4096 \
                and sentinel(m["lo"]):
            kind = "coroutine stacks"
        else:
            kind = "other anonymous (WAMR linear memories, …)"
        o = out[kind]
        o[0] += m["rss"]
        o[1] += 1
        if m["perm"].startswith("rw"):
            o[2][size] += 1
        prev = m
    return out


def total_rss(pid):
    return int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{pid}/status").read()).group(1))


MEM = open(f"/proc/{p.pid}/mem", "rb")
time.sleep(0.3)
before, rss0 = classify(smaps(p.pid)), total_rss(p.pid)
socks = []
t0 = time.time()
for i in range(n):
    s = socket.create_connection((host, int(port)), timeout=30)
    s.sendall(REQ)
    got = b""
    while b"\r\n\r\n" not in got or len(got) < got.index(b"\r\n\r\n") + 4 + int(
            re.search(rb"Content-Length: (\d+)", got).group(1) if re.search(rb"Content-Length: (\d+)", got) else 0):
        chunk = s.recv(4096)
        if not chunk:
            sys.exit(f"connection {i} closed early after {got!r}")
        got += chunk
    socks.append(s)
open_s = time.time() - t0
time.sleep(1.0)
after, rss1 = classify(smaps(p.pid)), total_rss(p.pid)

print(f"serve {' '.join(extra)}: {n} held connections, opened in {open_s:.1f} s; "
      f"VmRSS {rss0/1024:.1f} -> {rss1/1024:.1f} MiB, {(rss1-rss0)/n:.1f} KiB/conn")
print(f"{'kind':44} {'RSS before KiB':>15} {'after KiB':>12} {'KiB/conn':>9} {'maps/conn':>9}  rw mapping sizes after (KiB: count)")
for kind in sorted(set(before) | set(after), key=lambda k: -(after.get(k, [0])[0] - before.get(k, [0])[0])):
    b, a = before.get(kind, [0, 0, {}]), after.get(kind, [0, 0, {}])
    sizes = ", ".join(f"{k}: {v}" for k, v in sorted(a[2].items(), key=lambda kv: -kv[1])[:4])
    print(f"{kind:44} {b[0]:15} {a[0]:12} {(a[0]-b[0])/n:9.2f} {(a[1]-b[1])/n:9.2f}  {sizes}")
# How deep the held connections' coroutines went: the deepest non-zero byte of a sample of stacks
# (stack pages start zero-filled; the bottom 64 bytes hold the sentinel).
depths = collections.Counter()
all_maps = smaps(p.pid)
stacks = [m for i, m in enumerate(all_maps) if i > 0 and m["perm"].startswith("rw") and m["rss"] > 0
          and all_maps[i - 1]["perm"] == "---p" and all_maps[i - 1]["hi"] == m["lo"] and sentinel(m["lo"])]
# Coroutine stacks all have the configured size; threads' stacks (2 MiB) are also above a guard.
usual = collections.Counter(m["hi"] - m["lo"] for m in stacks).most_common(1)
stacks = [m for m in stacks if usual and m["hi"] - m["lo"] == usual[0][0]]
for m in stacks[:: max(1, len(stacks) // 200)]:
    MEM.seek(m["lo"] + 64)
    data = MEM.read(m["hi"] - m["lo"] - 64)
    deepest = m["lo"] + 64 + (len(data) - len(data.lstrip(b"\0")))
    depths[(m["hi"] - deepest + 1023) // 1024] += 1
print("deepest stack byte touched, KiB below the top (sampled stacks: count): "
      + ", ".join(f"{k}: {v}" for k, v in sorted(depths.items())))
for s in socks:
    s.close()
p.send_signal(2)
p.communicate(timeout=60)
