#!/usr/bin/env python3
"""Server RSS after 200 clients each make the guest grow its memory 8 times by 4 MiB
(guests/grow.wat), with the budget given on the command line.
usage: scripts/guest_memory_rss.py target/release/wamr-coro [--max-guest-memory-mib 256]"""
import socket, subprocess, sys, time, re
binary, extra = sys.argv[1], sys.argv[2:]
p = subprocess.Popen([binary, "serve", "guests/grow.wat", "--listen", "127.0.0.1:0", "--workers", "2"] + extra,
                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
addr = p.stdout.readline().strip().split()[-1]; host, port = addr.rsplit(":", 1)
def rss():
    return int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{p.pid}/status").read()).group(1))
clients = []
refused = grows_failed = 0
for i in range(200):
    s = socket.create_connection((host, int(port)), timeout=10); clients.append(s)
for rnd in range(8):
    for s in clients:
        try:
            s.sendall(b"x"); r = s.recv(4)
            if len(r) < 4: refused += 1; continue
            if int.from_bytes(r, "little", signed=True) < 0: grows_failed += 1
        except OSError: refused += 1
peak = rss()
print(f"{' '.join(extra) or 'default budget'}: server RSS {peak/1024:.0f} MiB after 200 clients x 8 grows of 4 MiB; {grows_failed} grows refused, {refused} failed replies")
for s in clients: s.close()
time.sleep(0.5)
p.send_signal(2); out = p.communicate(timeout=30)[0]
print("  stats:", re.search(r"guest memory:[^;]*;", out).group(0) if "guest memory" in out else out.strip()[-300:])
