"""
grpc.max_message_size is the item size limit, and an item over it is a
Rejection (DESIGN.md, data path step 1): the call goes on, the items
before and after it are accepted, and the reply names the item, its index
and both sizes. gRPC itself reads a message up to twice the limit (at
least 1 MiB more); past that it ends the call with RESOURCE_EXHAUSTED.

Requests of the other methods over the limit are RESOURCE_EXHAUSTED with
the sizes. Memory, journal and cluster mode answer the same (the check is
before the store).
"""
import grpc
import pytest

from conftest import HEALTH_CHECK, SUCCEEDED, pb, pb_grpc, state_name
from test_cluster import cluster_config, redis, wait_serving  # noqa: F401

MAX = 64 * 1024
# What gRPC reads before it ends the call itself (server.c receive_limit()).
GRPC_READS = max(2 * MAX, MAX + (1 << 20))


def varint(n):
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        if n == 0:
            return out + bytes([low])
        out += bytes([low | 0x80])


def item_of_size(item_id, size):
    """A WorkItem whose encoding is exactly SIZE bytes."""
    item = pb.WorkItem(id=item_id, kind="echo", payload=b"")
    pad = size - item.ByteSize()
    # The payload's length prefix grows with it: search the payload size.
    n = max(pad - 8, 0)
    while pb.WorkItem(id=item_id, kind="echo", payload=b"x" * n).ByteSize() < size:
        n += 1
    item = pb.WorkItem(id=item_id, kind="echo", payload=b"x" * n)
    assert item.ByteSize() == size, (item.ByteSize(), size)
    return item


@pytest.fixture(params=["memory", "journal", "cluster"])
def sized(request, start_daemon, tmp_path):
    overrides = {"grpc": {"max_message_size": f"{MAX // 1024}KiB"}}
    if request.param == "journal":
        d = start_daemon({**overrides, "queue": {"journal": str(tmp_path / "journal")}})
    elif request.param == "cluster":
        r = request.getfixturevalue("redis")
        d = wait_serving(start_daemon(cluster_config(r, "sizes", "3s", 2, overrides)))
    else:
        d = start_daemon(overrides)
    return d


def test_item_over_the_limit_is_rejected_and_the_call_goes_on(sized):
    c = sized.client()
    sub = c.subscribe(sync=True)
    items = [pb.WorkItem(id="before", kind="echo", payload=b"b"),
             item_of_size("at-limit", MAX),
             item_of_size("over", MAX + 1),
             item_of_size("far-over", GRPC_READS - 64),
             pb.WorkItem(id="after", kind="echo", payload=b"a")]
    reply = c.submit(items, timeout=30)
    assert (reply.accepted, reply.rejected) == (3, 2), reply
    rejections = {r.id: r for r in reply.rejections}
    assert rejections["over"].index == 2, reply
    assert rejections["over"].reason == \
        f"item is {MAX + 1} bytes, over grpc.max_message_size ({MAX})", reply
    assert rejections["far-over"].index == 3, reply
    assert f"item is {GRPC_READS - 64} bytes" in rejections["far-over"].reason, reply
    finals = sub.wait_final(["before", "at-limit", "after"], timeout=20)
    assert {i: state_name(f.state) for i, f in finals.items()} == \
        {i: "SUCCEEDED" for i in ("before", "at-limit", "after")}
    assert finals["at-limit"].result == items[1].payload
    # A rejected item is not known: nothing of it was kept.
    got = c.get_items(["over", "far-over", "before"], timeout=10)
    assert [i.id for i in got.items] == ["before"], got
    assert sorted(got.not_found) == ["far-over", "over"], got
    assert got.items[0].state == SUCCEEDED


def test_message_past_what_grpc_reads_ends_the_call(sized):
    c = sized.client()
    with pytest.raises(grpc.RpcError) as e:
        c.submit([item_of_size("huge", GRPC_READS + 1)], timeout=30)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
    # The daemon serves on.
    reply = c.submit([pb.WorkItem(id="next", kind="echo", payload=b"n")], timeout=30)
    assert reply.accepted == 1, reply


def unary_requests():
    # 400 ids of 200 bytes: about 1.2 x MAX encoded, within the 1000 ids a
    # request may name.
    ids = [f"{n:06d}".ljust(200, "i") for n in range(400)]
    return {
        "getItems": ("getItems", pb.ItemsRequest(item_ids=ids)),
        "cancel": ("cancel", pb.CancelRequest(item_ids=ids)),
        "retry": ("retry", pb.RetryRequest(item_ids=ids)),
    }


@pytest.mark.parametrize("method", ["getItems", "cancel", "retry"])
def test_request_over_the_limit_is_resource_exhausted(start_daemon, method):
    d = start_daemon({"grpc": {"max_message_size": f"{MAX // 1024}KiB"}})
    c = d.client()
    name, request = unary_requests()[method]
    size = request.ByteSize()
    assert MAX < size < GRPC_READS
    with pytest.raises(grpc.RpcError) as e:
        getattr(c.stub, name)(request, timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
    assert e.value.details() == \
        f"the request is {size} bytes, over grpc.max_message_size ({MAX})", e.value.details()
    # At the limit, the same method answers.
    ids = list(request.item_ids)
    while type(request)(item_ids=ids).ByteSize() > MAX:
        ids.pop()
    reply = getattr(c.stub, name)(type(request)(item_ids=ids), timeout=10)
    assert sorted(reply.not_found) == sorted(ids), reply     # none of them exists


def test_subscribe_and_health_requests_over_the_limit(start_daemon):
    d = start_daemon({"grpc": {"max_message_size": f"{MAX // 1024}KiB"}})
    c = d.client()
    request = pb.UpdatesRequest(item_ids=[f"id-{n:06d}" for n in range(MAX // 8)])
    with pytest.raises(grpc.RpcError) as e:
        next(iter(c.stub.getUpdates(request, timeout=10)))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
    assert "over grpc.max_message_size" in e.value.details(), e.value.details()
    # Health: a HealthCheckRequest whose service name is over the limit.
    check = c.channel.unary_unary(HEALTH_CHECK, request_serializer=lambda b: b,
                                  response_deserializer=lambda b: b)
    name = b"s" * (MAX + 10)
    with pytest.raises(grpc.RpcError) as e:
        check(b"\x0a" + varint(len(name)) + name, timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
    assert c.health() == b"\x08\x01"       # SERVING


def test_compressed_items_are_judged_by_their_size_decompressed(start_daemon):
    """A gzip-compressed message is a few hundred bytes on the wire; the
    limit is on what it decompresses to (a small compressed message must not
    slip a large item in)."""
    d = start_daemon({"grpc": {"max_message_size": f"{MAX // 1024}KiB"}})
    channel = grpc.insecure_channel(d.address, compression=grpc.Compression.Gzip)
    try:
        stub = pb_grpc.DoSomethingServiceStub(channel)
        items = [item_of_size("fits", MAX), item_of_size("inflates-over", MAX + 1),
                 item_of_size("inflates-far", GRPC_READS - 64)]
        reply = stub.doSomething(iter(items), timeout=30)
        assert (reply.accepted, reply.rejected) == (1, 2), reply
        assert [r.index for r in reply.rejections] == [1, 2], reply
        assert reply.rejections[0].reason == \
            f"item is {MAX + 1} bytes, over grpc.max_message_size ({MAX})", reply
        with pytest.raises(grpc.RpcError) as e:
            stub.doSomething(iter([item_of_size("bomb", GRPC_READS + 1)]), timeout=30)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
    finally:
        channel.close()


def test_reflection_request_over_the_limit(start_daemon):
    """A ServerReflectionInfo stream's request over the limit ends it with
    RESOURCE_EXHAUSTED and both sizes, like the other methods' requests; one
    within the limit is answered."""
    d = start_daemon({"grpc": {"max_message_size": f"{MAX // 1024}KiB"}})
    c = d.client()
    info = c.channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                   request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
    host = b"h" * (MAX + 10)
    big = b"\x0a" + varint(len(host)) + host            # field 1: host
    with pytest.raises(grpc.RpcError) as e:
        list(info(iter([big]), timeout=10))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
    assert e.value.details() == \
        f"the request is {len(big)} bytes, over grpc.max_message_size ({MAX})", e.value.details()
    list_services = b"\x3a\x00"                          # field 7: list_services ""
    replies = list(info(iter([list_services]), timeout=10))
    assert len(replies) == 1 and b"DoSomethingService" in replies[0], replies
