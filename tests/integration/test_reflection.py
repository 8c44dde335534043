"""Server reflection: what grpcurl asks, answered without the .proto file."""
import subprocess
import sys
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

# The vendored proto the server is built from (a v1 package; v1alpha is the
# same on the wire), copied under a name that does not shadow grpcio.
REFLECTION_PROTO = (Path(__file__).resolve().parents[2] / "proto" / "grpc" / "reflection" / "v1"
                    / "reflection.proto")

SERVICE = "com.agrounds.dosomething.v1.DoSomethingService"


def reflection_module(tmp_path):
    (tmp_path / "reflection.proto").write_text(REFLECTION_PROTO.read_text())
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path}",
                    f"--python_out={tmp_path}", str(tmp_path / "reflection.proto")], check=True)
    sys.path.insert(0, str(tmp_path))
    try:
        import reflection_pb2
    finally:
        sys.path.remove(str(tmp_path))
    return reflection_pb2


def ask(address, pb, requests, version="v1alpha"):
    channel = grpc.insecure_channel(address)
    try:
        call = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.ServerReflectionResponse.FromString)
        return list(call(iter(requests), timeout=10))
    finally:
        channel.close()


def test_reflection_describes_the_service(start_daemon, tmp_path):
    d = start_daemon()
    pb = reflection_module(tmp_path)
    R = pb.ServerReflectionRequest
    listed, by_symbol, by_file, missing = ask(d.address, pb, [
        R(list_services=""), R(file_containing_symbol=SERVICE),
        R(file_by_filename="com/agrounds/dosomething/v1/do_something.proto"),
        R(file_containing_symbol="no.such.Service")])

    assert [s.name for s in listed.list_services_response.service] == [SERVICE]
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert by_symbol.original_request.file_containing_symbol == SERVICE

    blobs = by_symbol.file_descriptor_response.file_descriptor_proto
    assert blobs == by_file.file_descriptor_response.file_descriptor_proto and len(blobs) == 1
    fd = descriptor_pb2.FileDescriptorProto.FromString(blobs[0])
    assert [m.name for m in fd.service[0].method] == ["doSomething", "getUpdates", "getItems", "cancel", "retry"]

    # A client knowing only what reflection said can build a WorkItem and use it.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    WorkItem = message_factory.MessageFactory(pool).GetPrototype(
        pool.FindMessageTypeByName("com.agrounds.dosomething.v1.WorkItem"))
    channel = grpc.insecure_channel(d.address)
    try:
        submit = channel.stream_unary(f"/{SERVICE}/doSomething",
                                      request_serializer=lambda m: m.SerializeToString(),
                                      response_deserializer=lambda b: b)
        reply = submit(iter([WorkItem(id="r1", payload=b"x")]), timeout=10)
        assert reply == b"\x08\x01"          # SubmitReply{accepted: 1}
    finally:
        channel.close()


def test_reflection_v1_answers_too(start_daemon, tmp_path):
    d = start_daemon()
    pb = reflection_module(tmp_path)
    (listed,) = ask(d.address, pb, [pb.ServerReflectionRequest(list_services="")], version="v1")
    assert [s.name for s in listed.list_services_response.service] == [SERVICE]
