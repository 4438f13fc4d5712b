#!/usr/bin/env python3
"""Capture the raw TLS ClientHello a real client sends, for use as a test fixture.

Listens on 127.0.0.1 on an ephemeral port, runs a client command against it,
accepts one connection, reads TLS records until the first handshake message
(the ClientHello) is complete, writes exactly the records that carry it
(record headers included, nothing after) to OUTPUT, and closes the connection.
The client then fails its handshake; that is expected.

Usage:
    capture-clienthello.py OUTPUT 'CLIENT COMMAND WITH {port}' [--timeout SECS]
    capture-clienthello.py --describe FILE [FILE ...]

The command template is run through /bin/sh with every ``{port}`` replaced by
the listening port; its stdin is /dev/null.  Examples:

    scripts/capture-clienthello.py tests/data/openssl-s_client-clienthello.bin \\
        'openssl s_client -connect 127.0.0.1:{port} -servername openssl.example.com </dev/null'

    scripts/capture-clienthello.py tests/data/curl-clienthello.bin \\
        'curl -sk --max-time 3 --resolve curl.example.com:{port}:127.0.0.1 https://curl.example.com:{port}/'

``--describe`` decodes a capture and prints its size, record count, SNI, ALPN
and a few other ClientHello fields; it exits non-zero if the file is not
exactly a sequence of handshake records holding one complete ClientHello.

Standard library only.
"""

import argparse
import hashlib
import socket
import struct
import subprocess
import sys

REC_HANDSHAKE = 0x16
HS_CLIENT_HELLO = 1
MAX_RECORD_BODY = 16384 + 2048  # generous ceiling on a TLSPlaintext fragment
MAX_HELLO = 1 << 17  # refuse absurd handshake lengths

GROUPS = {
    0x0017: "secp256r1", 0x0018: "secp384r1", 0x0019: "secp521r1",
    0x001D: "x25519", 0x001E: "x448",
    0x0100: "ffdhe2048", 0x0101: "ffdhe3072", 0x0102: "ffdhe4096",
    0x0103: "ffdhe6144", 0x0104: "ffdhe8192",
    0x11EC: "X25519MLKEM768", 0x11EB: "SecP256r1MLKEM768", 0x6399: "X25519Kyber768Draft00",
}
EXTS = {
    0: "server_name", 5: "status_request", 10: "supported_groups", 11: "ec_point_formats",
    13: "signature_algorithms", 16: "alpn", 18: "signed_certificate_timestamp",
    21: "padding", 22: "encrypt_then_mac", 23: "extended_master_secret",
    27: "compress_certificate", 35: "session_ticket", 41: "pre_shared_key",
    43: "supported_versions", 45: "psk_key_exchange_modes", 49: "post_handshake_auth",
    51: "key_share", 17513: "application_settings", 17613: "application_settings_new",
    0xCA34: "trust_anchors", 0xFE0D: "encrypted_client_hello", 0xFF01: "renegotiation_info",
}
VERSIONS = {0x0301: "TLS1.0", 0x0302: "TLS1.1", 0x0303: "TLS1.2", 0x0304: "TLS1.3"}


def is_grease(v):
    return (v & 0x0F0F) == 0x0A0A and (v >> 8) == (v & 0xFF)


def name(table, v):
    if is_grease(v):
        return "GREASE"
    return table.get(v, "0x%04x" % v)


class CaptureError(Exception):
    pass


def hello_complete(buf):
    """Return the byte length of the records carrying the first handshake
    message if it is complete within ``buf``, else None.  Raises on bad framing."""
    off = 0
    body = b""
    while True:
        if len(buf) - off < 5:
            return None
        rtype, rver, rlen = struct.unpack_from("!BHH", buf, off)
        if rtype != REC_HANDSHAKE:
            raise CaptureError("record at offset %d has type 0x%02x, not handshake" % (off, rtype))
        if rver >> 8 != 3:
            raise CaptureError("record at offset %d has version 0x%04x" % (off, rver))
        if rlen == 0 or rlen > MAX_RECORD_BODY:
            raise CaptureError("record at offset %d has length %d" % (off, rlen))
        if len(buf) - off - 5 < rlen:
            return None
        body += buf[off + 5:off + 5 + rlen]
        off += 5 + rlen
        if len(body) >= 4:
            if body[0] != HS_CLIENT_HELLO:
                raise CaptureError("first handshake message has type %d, not ClientHello" % body[0])
            hlen = int.from_bytes(body[1:4], "big")
            if hlen > MAX_HELLO:
                raise CaptureError("ClientHello length %d too large" % hlen)
            if len(body) >= 4 + hlen:
                return off


def capture(output, template, timeout):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(timeout)
    port = srv.getsockname()[1]
    cmd = template.replace("{port}", str(port))
    print("listening on 127.0.0.1:%d; running: %s" % (port, cmd), file=sys.stderr)
    client = subprocess.Popen(cmd, shell=True, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        conn, _ = srv.accept()
        conn.settimeout(timeout)
        buf = b""
        with conn:
            while True:
                end = hello_complete(buf)
                if end is not None:
                    break
                chunk = conn.recv(65536)
                if not chunk:
                    raise CaptureError("client closed after %d bytes, ClientHello incomplete" % len(buf))
                buf += chunk
        data = buf[:end]
        with open(output, "wb") as f:
            f.write(data)
        print("wrote %d bytes to %s (%d bytes read)" % (len(data), output, len(buf)), file=sys.stderr)
    finally:
        srv.close()
        try:
            client.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait()
    return data


def parse(data):
    """Decode a capture into a dict; raises CaptureError on any inconsistency."""
    records = []
    off = 0
    body = b""
    while off < len(data):
        if len(data) - off < 5:
            raise CaptureError("trailing %d bytes are not a record header" % (len(data) - off))
        rtype, rver, rlen = struct.unpack_from("!BHH", data, off)
        if rtype != REC_HANDSHAKE:
            raise CaptureError("record %d has type 0x%02x" % (len(records), rtype))
        if off + 5 + rlen > len(data):
            raise CaptureError("record %d truncated" % len(records))
        records.append((off, rver, rlen))
        body += data[off + 5:off + 5 + rlen]
        off += 5 + rlen
    if len(body) < 4 or body[0] != HS_CLIENT_HELLO:
        raise CaptureError("not a ClientHello")
    hlen = int.from_bytes(body[1:4], "big")
    if len(body) != 4 + hlen:
        raise CaptureError("handshake length %d but records carry %d body bytes" % (hlen, len(body) - 4))
    # Offsets of handshake-body bytes in the stream, to report where the SNI sits.
    stream_off = []
    for roff, _, rlen in records:
        stream_off.extend(range(roff + 5, roff + 5 + rlen))

    h = body
    p = 4
    def take(n):
        nonlocal p
        if p + n > len(h):
            raise CaptureError("ClientHello truncated at body offset %d" % p)
        v = h[p:p + n]
        p += n
        return v
    legacy_version = struct.unpack("!H", take(2))[0]
    take(32)
    sid = take(take(1)[0])
    cs_len = struct.unpack("!H", take(2))[0]
    suites = [struct.unpack_from("!H", h, p + i)[0] for i in range(0, cs_len, 2)]
    take(cs_len)
    take(take(1)[0])  # compression methods
    info = {
        "size": len(data), "records": [(o, v, l) for o, v, l in records],
        "handshake_len": hlen, "legacy_version": legacy_version,
        "session_id_len": len(sid), "cipher_suites": len(suites),
        "extensions": [], "sni": None, "sni_offset": None, "alpn": [],
        "key_shares": [], "supported_versions": [], "ech": None,
    }
    if p == len(h):
        return info
    ext_total = struct.unpack("!H", take(2))[0]
    if p + ext_total != len(h):
        raise CaptureError("extensions length %d does not match remaining %d" % (ext_total, len(h) - p))
    while p < len(h):
        etype, elen = struct.unpack("!HH", take(4))
        estart = p
        ed = take(elen)
        info["extensions"].append(name(EXTS, etype))
        if etype == 0:
            q = 2
            while q < len(ed):
                nt, nl = ed[q], struct.unpack_from("!H", ed, q + 1)[0]
                if nt == 0:
                    info["sni"] = ed[q + 3:q + 3 + nl].decode("ascii")
                    info["sni_offset"] = (stream_off[estart + q + 3], stream_off[estart + q + 3 + nl - 1] + 1)
                q += 3 + nl
        elif etype == 16:
            q = 2
            while q < len(ed):
                info["alpn"].append(ed[q + 1:q + 1 + ed[q]].decode("ascii"))
                q += 1 + ed[q]
        elif etype == 51:
            q = 2
            while q < len(ed):
                g, kl = struct.unpack_from("!HH", ed, q)
                info["key_shares"].append((name(GROUPS, g), kl))
                q += 4 + kl
        elif etype == 43:
            info["supported_versions"] = [name(VERSIONS, struct.unpack_from("!H", ed, i)[0])
                                          for i in range(1, 1 + ed[0], 2)]
        elif etype == 0xFE0D:
            info["ech"] = elen
    return info


def describe(path):
    with open(path, "rb") as f:
        data = f.read()
    info = parse(data)
    print("%s:" % path)
    print("  size:       %d bytes" % info["size"])
    print("  sha256:     %s" % hashlib.sha256(data).hexdigest())
    print("  records:    %d (%s)" % (len(info["records"]), ", ".join(
        "0x%04x/%d" % (v, l) for _, v, l in info["records"])))
    print("  handshake:  ClientHello, %d-byte body, legacy_version 0x%04x, session_id %d, %d cipher suites"
          % (info["handshake_len"], info["legacy_version"], info["session_id_len"], info["cipher_suites"]))
    sni = info["sni"] or "none"
    if info["sni_offset"]:
        sni += " (stream bytes %d-%d of %d)" % (info["sni_offset"][0], info["sni_offset"][1], info["size"])
    print("  SNI:        %s" % sni)
    print("  ALPN:       %s" % (",".join(info["alpn"]) or "none"))
    print("  versions:   %s" % (",".join(info["supported_versions"]) or "none"))
    print("  key_share:  %s" % (", ".join("%s (%d)" % ks for ks in info["key_shares"]) or "none"))
    print("  ECH:        %s" % ("%d bytes" % info["ech"] if info["ech"] is not None else "none"))
    print("  extensions: %s" % ", ".join(info["extensions"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--describe", action="store_true", help="decode the given capture file(s) instead")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the client (default 10)")
    ap.add_argument("args", nargs="+", metavar="OUTPUT COMMAND | FILE")
    a = ap.parse_args()
    try:
        if a.describe:
            for path in a.args:
                describe(path)
        else:
            if len(a.args) != 2:
                ap.error("capture mode takes OUTPUT and a COMMAND template containing {port}")
            if "{port}" not in a.args[1]:
                ap.error("COMMAND template must contain {port}")
            capture(a.args[0], a.args[1], a.timeout)
            describe(a.args[0])
    except (CaptureError, OSError, UnicodeDecodeError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
