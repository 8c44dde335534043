import struct, os
T=[]
for i in range(256):
    c=i
    for _ in range(8):
        c = (c>>1) ^ 0x82F63B78 if c & 1 else c>>1
    T.append(c)
def crc32c(b, crc=0):
    crc ^= 0xffffffff
    for x in b:
        crc = T[(crc ^ x) & 0xff] ^ (crc >> 8)
    return crc ^ 0xffffffff
def rec(t, body):
    hdr = struct.pack("<IBBH", len(body), t, 0, 0)
    return struct.pack("<I", crc32c(hdr + body)) + hdr + body
def accept(key, attempt=1, maxa=3, tmo=0, quick=0, id=b"a", kind=b"echo", batch=b"", raw=b"\x12\x03abc", due=0):
    flags = quick | (2 if due else 0)
    body = struct.pack("<QIIIBBHHHI", key, attempt, maxa, tmo, flags, 0, len(id), len(kind), len(batch), len(raw)) + id + kind + batch + raw
    if due:
        body += struct.pack("<Q", due)
    return rec(1, body)
final = lambda k: rec(2, struct.pack("<Q", k))
attempt = lambda k, a: rec(3, struct.pack("<QI", k, a))
attempt_due = lambda k, a, due: rec(3, struct.pack("<QIIQ", k, a, 0, due))
seq = lambda s: rec(4, struct.pack("<Q", s))
M=b"DSJRNL01"
seeds = {
 "one_accept": b"\x00" + M + seq(1000) + accept(1),
 "accept_final": b"\x00" + M + seq(5) + accept(1, id=b"x1") + accept(2, id=b"x2", kind=b"sleep", raw=b"\x1a\x04ms=5") + final(1) + attempt(2, 3),
 "two_segments": b"\x00" + M + seq(7) + accept(3, id=b"s1", batch=b"b1") + accept(4, id=b"s2", quick=1) + M + seq(9) + final(3) + attempt(4, 2) + accept(5, tmo=1000, id=b"s3"),
 "torn_tail": b"\x00" + M + accept(1) + accept(2)[:-3],
 "corrupt_older": b"\x00" + M + accept(1) + b"\xff"*20 + accept(2) + M + accept(3),
 "not_a_segment": b"\x00" + b"garbage!" + M + accept(9) + final(9),
 "fix_crc": b"\x01" + M + b"\0\0\0\0" + struct.pack("<IBBH", 8, 2, 0, 0) + struct.pack("<Q", 1) + accept(1),
 "due_times": b"\x00" + M + seq(3) + accept(1, id=b"d1", due=1700000000000000000) + accept(2, id=b"d2") + attempt_due(2, 2, 1800000000000000000) + attempt(1, 2) + accept(3, id=b"d3", quick=1, due=5),
 "copy_forward": b"\x00" + M + seq(1) + accept(1, id=b"old") + M + M + seq(2) + accept(1, attempt=2, id=b"old") + final(1) + accept(2, id=b"new"),
}
for name, data in seeds.items():
    open(f"tests/fuzz/corpus/journal/{name}", "wb").write(data)
print(len(seeds))
