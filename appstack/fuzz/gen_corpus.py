#!/usr/bin/env python3
"""Writes the seed corpus of the rx_frames fuzz target (format: see testing::fuzz_rx).

Byte 0: bit 0 = connected flow. Byte 1: bits 0-1 MTU choice, 2-3 reassembly budget, 4-6 max
datagrams. Then records: u16 BE length + frame, or a length with the top bit set = advance the
clock by (low 8 bits) seconds. Host A (the flow) is 10.9.0.1:5001, peer B 10.9.0.2:6002.
"""
import os, struct

A_MAC = bytes.fromhex('024e4600000a'); B_MAC = bytes.fromhex('024e4600000b')
A = bytes([10, 9, 0, 1]); B = bytes([10, 9, 0, 2]); PA = 5001; PB = 6002

def cs(b):
    if len(b) % 2: b += b'\0'
    s = sum(int.from_bytes(b[i:i+2], 'big') for i in range(0, len(b), 2))
    while s > 0xffff: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff

def eth(payload, dst=A_MAC, et=0x0800):
    return dst + B_MAC + struct.pack('>H', et) + payload

def ip(payload, proto=17, ident=1, off=0, mf=False, src=B, dst=A, ttl=64, ver=4, opts=b''):
    ihl = 5 + len(opts) // 4
    h = bytes([(ver << 4) | ihl, 0]) + struct.pack('>HHH', 20 + len(opts) + len(payload), ident,
        (off // 8) | (0x2000 if mf else 0)) + bytes([ttl, proto, 0, 0]) + src + dst + opts
    c = cs(h)
    return h[:10] + struct.pack('>H', c) + h[12:] + payload

def udp(payload, sp=PB, dp=PA, src=B, dst=A, zero=False):
    l = 8 + len(payload)
    h = struct.pack('>HHHH', sp, dp, l, 0)
    c = 0 if zero else (cs(src + dst + bytes([0, 17]) + struct.pack('>H', l) + h + payload) or 0xffff)
    return struct.pack('>HHHH', sp, dp, l, c) + payload

def icmp(ty, code, rest, quoted):
    m = bytes([ty, code, 0, 0]) + rest + quoted
    c = cs(m)
    return m[:2] + struct.pack('>H', c) + m[4:]

def rec(frame): return struct.pack('>H', len(frame)) + frame
def tick(secs): return struct.pack('>H', 0x8000 | secs)

def frags(data, per, ident=7):
    out = []
    for i in range(0, len(data), per):
        out.append(ip(data[i:i+per], ident=ident, off=i, mf=i + per < len(data)))
    return out

seeds = {}
d = udp(b'hello')
seeds['udp_hello'] = b'\x00\x00' + rec(eth(ip(d)))
seeds['udp_hello_connected'] = b'\x01\x00' + rec(eth(ip(d)))
seeds['udp_zero_checksum'] = b'\x00\x00' + rec(eth(ip(udp(b'nock', zero=True))))
seeds['udp_empty'] = b'\x00\x00' + rec(eth(ip(udp(b''))))
seeds['udp_bad_checksum'] = b'\x00\x00' + rec(eth(ip(udp(b'x')[:6] + b'\x12\x34' + b'x')))
seeds['udp_len_too_big'] = b'\x00\x00' + rec(eth(ip(struct.pack('>HHHH', PB, PA, 200, 0) + b'abc')))
seeds['udp_len_too_small'] = b'\x00\x00' + rec(eth(ip(struct.pack('>HHHH', PB, PA, 4, 0))))
seeds['udp_wrong_port'] = b'\x00\x00' + rec(eth(ip(udp(b'p', dp=9))))
seeds['udp_wrong_src_port'] = b'\x01\x00' + rec(eth(ip(udp(b'p', sp=9))))
seeds['ip_wrong_src'] = b'\x01\x00' + rec(eth(ip(udp(b's', src=bytes([10, 9, 0, 3])), src=bytes([10, 9, 0, 3]))))
seeds['ip_wrong_dst'] = b'\x00\x00' + rec(eth(ip(d, dst=bytes([10, 9, 0, 9]))))
seeds['ip_broadcast'] = b'\x00\x00' + rec(eth(ip(udp(b'b', dst=bytes([255]*4)), dst=bytes([255]*4)), dst=b'\xff'*6))
seeds['ip_options'] = b'\x00\x00' + rec(eth(ip(d, opts=b'\x01\x01\x01\x00')))
seeds['ip_bad_version'] = b'\x00\x00' + rec(eth(ip(d, ver=6)))
seeds['ip_bad_checksum'] = b'\x00\x00' + rec(eth(ip(d)[:10] + b'\x00\x00' + ip(d)[12:]))
seeds['ip_truncated'] = b'\x00\x00' + rec(eth(ip(d)[:15]))
seeds['ip_total_len_short'] = b'\x00\x00' + rec(eth(ip(d)[:2] + b'\x00\x10' + ip(d)[4:]))
seeds['ip_padding'] = b'\x00\x00' + rec(eth(ip(udp(b'')) + b'\x00' * 18))
seeds['ip_other_proto'] = b'\x00\x00' + rec(eth(ip(b'tcp?', proto=6)))
seeds['eth_short'] = b'\x00\x00' + rec(A_MAC + B_MAC)
seeds['eth_wrong_dst'] = b'\x00\x00' + rec(eth(ip(d), dst=bytes.fromhex('024e46000099')))
seeds['eth_arp'] = b'\x00\x00' + rec(eth(b'\x00' * 28, et=0x0806))
seeds['eth_vlan'] = b'\x00\x00' + rec(eth(b'\x00\x05\x08\x00' + ip(d), et=0x8100))
big = udp(bytes(range(256)) * 16)
fr = frags(big, 1480)
seeds['frag_in_order'] = b'\x00\x00' + b''.join(rec(eth(f)) for f in fr)
seeds['frag_reverse'] = b'\x00\x00' + b''.join(rec(eth(f)) for f in reversed(fr))
seeds['frag_duplicate'] = b'\x00\x00' + b''.join(rec(eth(f)) for f in [fr[0], fr[0], fr[1], fr[2]])
seeds['frag_overlap'] = b'\x00\x00' + rec(eth(fr[0])) + rec(eth(ip(b'\xee' * 1480, ident=7, off=1472, mf=True))) + b''.join(rec(eth(f)) for f in fr[1:])
seeds['frag_missing_timeout'] = b'\x00\x00' + rec(eth(fr[0])) + rec(eth(fr[2])) + tick(31) + rec(eth(fr[1]))
seeds['frag_oversize'] = b'\x00\x00' + rec(eth(fr[0])) + rec(eth(ip(b'\0' * 16, ident=7, off=65512)))
seeds['frag_small_budget'] = b'\x00\x14' + b''.join(rec(eth(f)) for f in fr)
seeds['frag_tiny_budget_one_slot'] = b'\x00\x1c' + b''.join(rec(eth(f)) for f in frags(big, 8 * 60, ident=3))
seeds['frag_two_interleaved'] = b'\x00\x20' + b''.join(rec(eth(x)) + rec(eth(y)) for x, y in zip(frags(big, 1480, 1), frags(big, 1480, 2)))
seeds['frag_odd_len'] = b'\x00\x00' + rec(eth(ip(b'\0' * 13, ident=5, off=0, mf=True)))
seeds['frag_icmp'] = b'\x00\x00' + rec(eth(ip(b'\0' * 16, proto=1, ident=5, off=0, mf=True)))
seeds['frag_mtu68'] = b'\x00\x02' + b''.join(rec(eth(f)) for f in frags(udp(b'z' * 200), 48, ident=9))
q = ip(udp(b'are you there?', sp=PA, dp=PB, src=A, dst=B), src=A, dst=B)[:28]
seeds['icmp_port_unreachable'] = b'\x01\x00' + rec(eth(ip(icmp(3, 3, b'\0' * 4, q), proto=1)))
seeds['icmp_frag_needed'] = b'\x01\x00' + rec(eth(ip(icmp(3, 4, b'\x00\x00\x03\xe8', q), proto=1)))
seeds['icmp_host_unreachable_unconnected'] = b'\x00\x00' + rec(eth(ip(icmp(3, 1, b'\0' * 4, q), proto=1)))
seeds['icmp_time_exceeded'] = b'\x01\x00' + rec(eth(ip(icmp(11, 0, b'\0' * 4, q), proto=1)))
seeds['icmp_echo'] = b'\x00\x00' + rec(eth(ip(icmp(8, 0, b'\x00\x01\x00\x01', b'ping'), proto=1)))
seeds['icmp_short_quote'] = b'\x00\x00' + rec(eth(ip(icmp(3, 3, b'\0' * 4, q[:22]), proto=1)))
seeds['icmp_bad_checksum'] = b'\x00\x00' + rec(eth(ip(icmp(3, 3, b'\0' * 4, q)[:2] + b'\0\0' + icmp(3, 3, b'\0' * 4, q)[4:], proto=1)))
seeds['mixed_stream'] = b'\x01\x30' + b''.join(rec(eth(x)) for x in [ip(d), fr[1], ip(icmp(3, 3, b'\0' * 4, q), proto=1), fr[0], ip(d, ver=5), fr[2]])

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'corpus', 'rx_frames')
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), 'wb') as f:
        f.write(data)
print(len(seeds), 'seeds written to', out)
