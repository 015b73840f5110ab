# Hostile IPv4 fragments against a nemflow UDP echo server (`udp-echo`), from the remote host
# (run inside its network namespace, as root, with Debian's python3-scapy):
#
#   e2e_hostile_fragments.py DST PORT SPORT SRC MAX_BYTES
#
# Builds the fragments with scapy, sends them in order through a raw IP socket (paced so that the
# flow's RX channel never overflows: every frame must reach the stack), collects the echoes on a
# UDP socket bound to SPORT and prints one JSON object: fragments sent per case, the good
# datagrams that came back byte for byte, and anything else that came back. Used by
# `e2e_udp_tap.rs`; the comments say what the stack must do with each case.
import json, random, socket, sys, time
from scapy.all import IP, UDP, Raw

DST, PORT, SPORT = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
SRC = sys.argv[4]
MAX_BYTES = int(sys.argv[5])  # the server's reassembly budget, to size the flood

rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
rx.bind((SRC, SPORT))
tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

# The server is up once it echoes a probe (before that the flow manager refuses the port).
rx.settimeout(0.1)
deadline = time.monotonic() + 10
probes = 1  # echoes of the probe: the one awaited here, and late ones of earlier tries
while True:
    rx.sendto(b"probe", (DST, PORT))
    try:
        if rx.recv(100) == b"probe":
            break
    except socket.timeout:
        pass
    if time.monotonic() > deadline:
        sys.exit("no echo of the probe within 10 s")

def udp_datagram(payload):
    # UDP header + payload with the checksum over the pseudo-header, as scapy computes it.
    return bytes(IP(src=SRC, dst=DST) / UDP(sport=SPORT, dport=PORT) / Raw(payload))[20:]

def frag(ident, off, data, more):
    assert off % 8 == 0
    return bytes(IP(src=SRC, dst=DST, id=ident, proto=17, flags="MF" if more else 0,
                    frag=off // 8) / Raw(data))

def cut(d, size=1480):
    return [(o, d[o:o + size], o + size < len(d)) for o in range(0, len(d), size)]

frames = []      # (case, bytes) in send order
good = {}        # payload -> case, for the datagrams that must come back
sent = {}        # case -> fragments sent

def add(case, ident, pieces):
    for off, data, more in pieces:
        frames.append((case, frag(ident, off, data, more)))
        sent[case] = sent.get(case, 0) + 1

def payload(ident, n):
    return random.Random(ident).randbytes(n)

# 1. Memory pressure first: datagrams of 20 fragments that never complete, more of them than
#    the budget holds; the oldest must be evicted.
flood = 0
while flood * 20 * (1480 + 64) < 3 * MAX_BYTES:
    d = udp_datagram(payload(0x200 + flood, 40000))
    add("flood", 0x200 + flood, cut(d)[:20])
    flood += 1

# 2. In order: comes back.
p = payload(0x100, 4000); good[p] = "in_order"
add("in_order", 0x100, cut(udp_datagram(p)))

# 3. Duplicates (first and middle fragment twice): comes back.
p = payload(0x101, 4000); good[p] = "duplicates"
f = cut(udp_datagram(p))
add("duplicates", 0x101, [f[0], f[0], f[1], f[1], f[2]])

# 4. Middle fragments out of order: comes back.
p = payload(0x102, 6000); good[p] = "reordered"
f = cut(udp_datagram(p))
add("reordered", 0x102, [f[0], f[3], f[1], f[2], f[4]])

# 5. Overlap (a fragment rewriting bytes of another, teardrop style): datagram discarded; the
#    fragments after it start a new datagram that never completes.
p = payload(0x103, 4000)
f = cut(udp_datagram(p))
add("overlap", 0x103, [f[0], (1000, b"\xee" * 1480, True), f[1], f[2]])

# 6. Missing middle fragment: times out.
p = payload(0x104, 4000)
f = cut(udp_datagram(p))
add("missing", 0x104, [f[0], f[2]])

# 7. Oversize: a last fragment ending past 65 535 bytes (ping of death): discarded.
p = payload(0x105, 4000)
f = cut(udp_datagram(p))
add("oversize", 0x105, [f[0], (65512, b"\x00" * 40, False)])

# 8. A middle fragment whose length is not a multiple of 8: that fragment is dropped, the
#    datagram completes with the right one and comes back.
p = payload(0x106, 4000); good[p] = "bad_len"
f = cut(udp_datagram(p))
add("bad_len", 0x106, [f[0], (1480, f[1][1][:1001], True), f[1], f[2]])

# 9. Inconsistent: a last fragment ending before data already held: discarded.
p = payload(0x107, 6000)
f = cut(udp_datagram(p))
add("inconsistent", 0x107, [f[0], f[2], (1480, f[1][1][:800], False)])

# 10. A later fragment before its first: the driver has no flow for it (orphan).
p = payload(0x108, 4000)
f = cut(udp_datagram(p))
add("orphan", 0x108, [f[2]])

# 11. After all that, a 60 000-byte datagram: comes back whole.
p = payload(0x300, 60000); good[p] = "big"
add("big", 0x300, cut(udp_datagram(p)))

# Paced: 16 frames, then 2 ms (at most 8 000 frames/s), so the server's RX channel (128 full-size
# buffers) has 16 ms of slack. The whole run still takes far less than the reassembly timeout.
t0 = time.monotonic()
for i, (_, b) in enumerate(frames):
    tx.sendto(b, (DST, 0))
    if i % 16 == 15:
        time.sleep(0.002)
send_s = time.monotonic() - t0

echoed, unknown = [], 0
rx.settimeout(1.0)
while True:
    try:
        d = rx.recv(65535)
    except socket.timeout:
        break
    if d == b"probe":
        probes += 1
    elif d in good:
        echoed.append(good[d])
    else:
        unknown += 1
print(json.dumps({"sent": sent, "frames": len(frames), "send_s": send_s,
                  "echoed": sorted(echoed), "unknown": unknown, "flood_datagrams": flood,
                  "probes": probes}))
