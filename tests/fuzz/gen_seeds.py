#!/usr/bin/env python3
"""Writes fuzz seeds from the frame catalogue: for every frame a tier serves, one request
with its required fields (and one with every field) filled with plausible values, packed as
msgpack the way sp_frame does ("t" first, then the fields). The seeds only help the fuzzer
past the decoder; they are regenerated with

    python3 tests/fuzz/gen_seeds.py TIER tests/fuzz/corpus/NAME

(TIER as in common/defs: KEYSRV, INBOX, ...) and committed."""
import os
import re
import struct
import sys

DEFS = os.path.join(os.path.dirname(__file__), "..", "..", "common", "defs")


def pack_uint(n):
    if n < 0x80:
        return bytes([n])
    if n < 0x10000:
        return b"\xcd" + struct.pack(">H", n)
    return b"\xcf" + struct.pack(">Q", n)


def pack_str(s):
    b = s.encode()
    assert len(b) < 256
    return (bytes([0xA0 | len(b)]) if len(b) < 32 else b"\xd9" + bytes([len(b)])) + b


def pack_bin(b):
    if len(b) < 256:
        return b"\xc4" + bytes([len(b)]) + b
    return b"\xc5" + struct.pack(">H", len(b)) + b


def pack_array(items):
    assert len(items) < 16
    return bytes([0x90 | len(items)]) + b"".join(items)


def pack_map(pairs):
    assert len(pairs) < 16
    return bytes([0x80 | len(pairs)]) + b"".join(k + v for k, v in pairs)


def read_fields():
    fields = {}
    for name in os.listdir(DEFS):
        if not name.startswith("fields"):
            continue
        for m in re.finditer(
            r"SP_FIELD\((\w+),\s*\"(\w+)\",\s*(\w+),\s*(\w+),\s*(\w+),\s*(\w+),\s*(\w+)\)",
            open(os.path.join(DEFS, name)).read(),
        ):
            fid, key, typ, lo, hi, cnt, rec = m.groups()
            fields[fid] = (key, typ, lo, hi, rec)
    return fields


def read_frames():
    frames = {}
    for name in os.listdir(DEFS):
        if not name.startswith("frames"):
            continue
        text = open(os.path.join(DEFS, name)).read()
        for m in re.finditer(r"SP_FRAME\((\w+),\s*(\d+),\s*([^,]*),\s*(BY\([^)]*\)|NOSERVE),(.*?)\)\n", text, re.S):
            fname, num, flags, by, body = m.groups()
            fl = re.findall(r"F\((\w+),\s*(REQ|OPT)\)", body)
            frames[fname] = (int(num), by, fl)
    return frames


def number(s, default):
    return int(s) if s.isdigit() else default


def value(fields, frames, fid, full):
    key, typ, lo, hi, rec = fields[fid]
    lo_n, hi_n = number(lo, 1), number(hi, 32)
    n = lo_n if lo_n > 0 else min(hi_n, 32) if hi_n > 0 else 32
    if fid == "PHONE":
        return pack_str("+15550001")
    if typ in ("UINT", "INT", "TYPE"):
        return pack_uint(1)
    if typ == "BOOL":
        return b"\xc3"
    if typ == "STR":
        return pack_str(("12345678" * 8)[: max(n, 1)])
    if typ == "BIN":
        return pack_bin(bytes(range(n % 256)) if n <= 256 else bytes(n))
    if typ == "BINS":
        return pack_array([pack_bin(bytes(n))])
    if typ == "UINTS":
        return pack_array([pack_uint(1), pack_uint(2)])
    if typ == "RECS" and rec in frames:
        _, _, rfl = frames[rec]
        pairs = [(pack_str(fields[f][0]), value(fields, frames, f, full)) for f, req in rfl if full or req == "REQ"]
        return pack_array([pack_map(pairs)])
    return pack_uint(0)


def main():
    tier, out = sys.argv[1], sys.argv[2]
    fields, frames = read_fields(), read_frames()
    os.makedirs(out, exist_ok=True)
    n = 0
    for fname, (num, by, fl) in sorted(frames.items()):
        if not by.startswith("BY(%s," % tier):
            continue
        for full in (False, True):
            pairs = [(pack_str("t"), pack_uint(num)), (pack_str("id"), pack_uint(7))]
            pairs += [(pack_str(fields[f][0]), value(fields, frames, f, full)) for f, req in fl if full or req == "REQ"]
            with open(os.path.join(out, "%s%s" % (fname.lower(), "_full" if full else "")), "wb") as f:
                f.write(pack_map(pairs))
            n += 1
    print("%d seeds in %s" % (n, out))


main()
