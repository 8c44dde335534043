"""grpc.health.v1.Health against the real binary: the messages are grpc's own
health.proto, compiled with protoc-c, so any service name a client may send
is understood (the hand-made decoder before took names under 128 bytes)."""
import grpc
import pytest

CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"
SERVICE = "com.agrounds.dosomething.v1.DoSomethingService"
SERVING = b"\x08\x01"


def request(service):
    """A HealthCheckRequest by hand: field 1, length-delimited."""
    name = service.encode()
    length, n = bytearray(), len(name)
    while True:
        length.append((n & 0x7f) | (0x80 if n > 0x7f else 0))
        n >>= 7
        if n == 0:
            break
    return b"\x0a" + bytes(length) + name if name else b""


def raw(channel, method, stream=False):
    make = channel.unary_stream if stream else channel.unary_unary
    return make(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)


@pytest.mark.parametrize("service", ["", SERVICE])
def test_check_serving(daemon, service):
    with grpc.insecure_channel(daemon.address) as ch:
        assert raw(ch, CHECK)(request(service), timeout=10) == SERVING


@pytest.mark.parametrize("length", [127, 128, 300, 70000])
def test_check_unknown_service_of_any_length(daemon, length):
    with grpc.insecure_channel(daemon.address) as ch:
        with pytest.raises(grpc.RpcError) as e:
            raw(ch, CHECK)(request("x" * length), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_check_malformed_request_is_invalid_argument(daemon):
    with grpc.insecure_channel(daemon.address) as ch:
        with pytest.raises(grpc.RpcError) as e:
            raw(ch, CHECK)(b"\x0a\x05ab", timeout=10)      # says 5 bytes, has 2
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_watch_sends_serving_first(daemon):
    with grpc.insecure_channel(daemon.address) as ch:
        stream = raw(ch, WATCH, stream=True)(request(SERVICE), timeout=10)
        assert next(stream) == SERVING
        stream.cancel()
