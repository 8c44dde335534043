"""
Hostile strings from clients (issue 14, points 1, 2 and 9).

proto3 strings must be valid UTF-8: protobuf-c does not check, every stock
client does (grpcio's parser fails the whole message, and the stream with
it). So an item or a getUpdates filter holding invalid UTF-8 is refused
with the field named, nothing the server sends holds invalid UTF-8, client
strings cut to fit a reply are cut between characters, and client strings
in the logs are escaped so that no client can write a line of its own.

Invalid UTF-8 cannot be sent through the generated stubs (they refuse to
serialize it), so those messages are encoded here by hand and sent with an
identity serializer.
"""

import grpc
import pytest

from conftest import FAILED, METHOD_SUBMIT, METHOD_UPDATES, SUCCEEDED, pb

# ---- protobuf encoding by hand ------------------------------------------------


def varint(n):
    out = bytearray()
    while True:
        if n < 0x80:
            out.append(n)
            return bytes(out)
        out.append((n & 0x7f) | 0x80)
        n >>= 7


def field_bytes(number, data):
    return varint(number << 3 | 2) + varint(len(data)) + data


def field_varint(number, value):
    return varint(number << 3) + varint(value)


def work_item_bytes(id=b"", kind=b"", payload=b"", params=(), batch=b"", timeout_ms=0,
                    max_attempts=0):
    """A WorkItem's encoding; strings as bytes, so they can be anything."""
    out = b""
    if id:
        out += field_bytes(1, id)
    if kind:
        out += field_bytes(2, kind)
    if payload:
        out += field_bytes(3, payload)
    for key, value in params:
        out += field_bytes(4, field_bytes(1, key) + field_bytes(2, value))
    if timeout_ms:
        out += field_varint(5, timeout_ms)
    if max_attempts:
        out += field_varint(6, max_attempts)
    if batch:
        out += field_bytes(7, batch)
    return out


def submit_raw(client, encoded_items, timeout=30):
    """doSomething with items already encoded; the reply parsed by the stock
    parser, which fails on any string that is not valid UTF-8."""
    call = client.channel.stream_unary(METHOD_SUBMIT, request_serializer=lambda b: b,
                                       response_deserializer=pb.SubmitReply.FromString)
    return call(iter(encoded_items), timeout=timeout)


def updates_raw(client, request_bytes, timeout=10):
    call = client.channel.unary_stream(METHOD_UPDATES, request_serializer=lambda b: b,
                                       response_deserializer=pb.Update.FromString)
    return call(request_bytes, timeout=timeout)


def good_item(item_id):
    return pb.WorkItem(id=item_id, kind="echo", payload=b"ok").SerializeToString()


BAD = b"bad-\xff\xfe-\xc0\x80-\xed\xa0\x80"      # stray bytes, an overlong, a surrogate

# ---- 1. invalid UTF-8 ---------------------------------------------------------

BAD_ITEMS = {
    "id": (dict(id=BAD, kind=b"echo"), "id is not valid UTF-8"),
    "kind": (dict(id=b"bad-kind", kind=BAD), "kind is not valid UTF-8"),
    "batch": (dict(id=b"bad-batch", kind=b"echo", batch=BAD), "batch is not valid UTF-8"),
    "param key": (dict(id=b"bad-key", kind=b"echo", params=[(BAD, b"1")]),
                  "param key 1 (of 1) is not valid UTF-8"),
    "param value": (dict(id=b"bad-value", kind=b"sleep", params=[(b"ms", BAD)]),
                    "param ms: value is not valid UTF-8"),
}


@pytest.mark.parametrize("field", list(BAD_ITEMS))
def test_invalid_utf8_item_is_rejected_naming_the_field(start_daemon, field):
    d = start_daemon()
    c = d.client()
    live = c.subscribe(sync=True, name="live")
    fields, reason = BAD_ITEMS[field]
    good = f"good-after-{field.replace(' ', '-')}"
    reply = submit_raw(c, [work_item_bytes(**fields), good_item(good)])
    assert (reply.accepted, reply.rejected) == (1, 1)
    [r] = reply.rejections
    assert r.index == 0 and r.reason == reason
    # The invalid bytes are never echoed: the index names the item.
    assert r.id == ("" if field == "id" else fields["id"].decode())
    # Every subscriber lives on, and a replay of everything parses too.
    assert live.wait_final([good])[good].state == SUCCEEDED
    assert not live.done, live.describe_end()
    replay = c.subscribe(replay=True, name="replay")
    replay.wait(lambda s: good in s.final, 10, f"{good} in the replay")
    assert not replay.done, replay.describe_end()


@pytest.mark.parametrize("field,number", [("item_ids", 3), ("kinds", 4), ("batches", 6)])
def test_invalid_utf8_filter_is_invalid_argument(start_daemon, field, number):
    d = start_daemon()
    c = d.client()
    request = field_bytes(number, b"fine") + field_bytes(number, BAD)
    with pytest.raises(grpc.RpcError) as e:
        for _ in updates_raw(c, request):
            pass
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == f"{field}[1] is not valid UTF-8"
    # A valid request still works.
    sub = c.subscribe(sync=True)
    assert not sub.done


def test_handler_errors_reach_subscribers_as_valid_utf8(start_daemon, tmp_path):
    """A program's error (its name and the last line of its stderr) cut to
    the error's 512 bytes in the middle of a character, and stderr that is
    no UTF-8 at all: the FAILED updates still parse, and no stream ends."""
    name = EURO * 70 + ".sh"                    # 213 bytes
    script = tmp_path / name
    # The last line, 1 + 3 * 400 bytes, is quoted cut to 300 and then cut
    # again where the error's 512 bytes end: in a euro sign.
    script.write_text("#!/bin/sh\nprintf 'a' >&2\n"
                      "i=0; while [ $i -lt 400 ]; do printf '\\342\\202\\254' >&2; "
                      "i=$((i+1)); done\nexit 2\n")
    script.chmod(0o755)
    d = start_daemon({"handlers": {
        "default": "echo", "echo": {"builtin": "echo"},
        "long": {"exec": [str(script)]},
        "junk": {"exec": ["sh", "-c", "printf 'x\\377\\376y\\300\\200' >&2; exit 3"]}}})
    reply, sub = d.client().run_items([{"id": "long", "kind": "long"},
                                       {"id": "junk", "kind": "junk"}])
    assert reply.accepted == 2
    long, junk = sub.final["long"], sub.final["junk"]
    assert long.state == FAILED and junk.state == FAILED
    assert long.error.startswith(f"{name} exited with status 2: a{EURO}"), long.error
    assert junk.error.startswith("sh exited with status 3: x"), junk.error
    assert not sub.done, sub.describe_end()


# ---- 2. truncation on character boundaries -----------------------------------

EURO = "\u20ac"          # 3 bytes
EMOJI = "\U0001f600"     # 4 bytes


def test_client_strings_in_replies_are_cut_between_characters(start_daemon):
    d = start_daemon()
    c = d.client()
    items = [
        # ids at the 256-byte limit are accepted ...
        {"id": EURO * 85 + "a", "kind": "echo"},                    # 256 bytes
        {"id": EMOJI * 64, "kind": "echo"},                         # 256 bytes
        # ... over it rejected, the echoed id cut at a character boundary
        {"id": EURO * 86, "kind": "echo"},                          # 258 bytes
        {"id": "a" + EMOJI * 64, "kind": "echo"},                   # 257 bytes
        # an unknown kind is quoted cut to 64 bytes
        {"id": "kind", "kind": EURO * 30},
        # a param key over 128 bytes is quoted cut to 32
        {"id": "key", "kind": "echo", "params": {EURO * 50: "1"}},
        # a param the kind does not take (quoted cut to 64) and a bad value (same)
        {"id": "unknown-param", "kind": "echo", "params": {EURO * 40: "1"}},
        {"id": "bad-value", "kind": "sleep", "params": {"ms": "a" + EMOJI * 30}},
        {"id": "good", "kind": "echo"},
    ]
    reply = c.submit(items)          # the stock parser: a half character fails it
    assert (reply.accepted, reply.rejected) == (3, 6)
    by_index = {r.index: r for r in reply.rejections}
    assert sorted(by_index) == [2, 3, 4, 5, 6, 7]
    assert by_index[2].id == EURO * 85
    assert by_index[3].id == "a" + EMOJI * 63
    assert by_index[2].reason == by_index[3].reason == "id is longer than 256 bytes"
    assert by_index[4].reason == f'unknown kind "{EURO * 21}"'
    assert by_index[5].reason == f'param key "{EURO * 10}..." is 150 bytes, longer than 128'
    assert by_index[6].reason == f'kind "echo" takes no param "{EURO * 21}"'
    assert by_index[7].reason.endswith(f'got "a{EMOJI * 15}"'), by_index[7].reason


# ---- 9. log forging ------------------------------------------------------------

FORGED = "2026-01-01T00:00:00.000Z [error] master 1: forged line"


def test_client_strings_cannot_forge_log_lines(start_daemon):
    """An id with a newline (and an escape sequence) is logged escaped: the
    timeout warning and the master's kill both log the id."""
    d = start_daemon()
    c = d.client()
    item_id = f"x\n{FORGED}\x1b[2J"
    sub = c.subscribe(sync=True)
    reply = c.submit([{"id": item_id, "kind": "sleep", "params": {"ms": "5000"},
                       "timeout_ms": 100, "max_attempts": 1}])
    assert reply.accepted == 1
    assert sub.wait_final([item_id], timeout=20)[item_id].state == FAILED
    d.wait_log(r"timed out after 100 ms on worker")
    text = d.log_path.read_text(errors="replace")
    assert not [line for line in text.splitlines() if line.startswith(FORGED)], text
    assert "\x1b" not in text
    assert 'item "x\\n2026-01-01T00:00:00.000Z [error] master 1: forged line\\x1b[2J"' in text

