#!/usr/bin/python3
"""dosomething_client: submit work items from a file to dosomethingd and
follow them to their final state, across reconnects and server restarts.

    dosomething_client.py [--address HOST:PORT] [--kind KIND] [--param K=V]... ITEMS

ITEMS holds one item per line ("-": standard input). A line is either a raw
payload, or a JSON object with any of id, kind, payload (text), payload_b64,
params (object), batch, timeout_ms, max_attempts. Blank lines are skipped.

Every final update (SUCCEEDED or FAILED) is printed once as a JSON line on
stdout; rejected items are printed the same way with state REJECTED. A
summary line goes to stderr at the end.

Exit status: 0 every item succeeded; 1 an item failed or was rejected; 2 bad
usage or input; 3 gave up (--deadline passed with items still open, or the
server answered with an error that retrying cannot fix).

How it stays correct across disconnects (see contrib/clients/README.md):
  - It subscribes (getUpdates, filtered on its batch labels and on SUCCEEDED,
    FAILED and RETRYING) before it submits anything, and submits only while
    that subscription is open, so no update of its items can be missed.
  - It remembers the seq of the last update it got. When the stream breaks
    (UNAVAILABLE, or RESOURCE_EXHAUSTED for a slow subscriber) it subscribes
    again with replay=true, after_seq=last: the daemon sends what it retained
    after that seq, then the live updates, with no gap and no duplicate.
  - When the server ends the stream itself (status OK: a graceful stop or an
    upgrade), whoever answers next may be another daemon, whose seq numbering
    is its own; and after a submit call failed without an answer the server
    may have been replaced. In both cases it resumes with replay=true,
    after_seq=0 instead: the batch label is unique to this run, so that
    replays only this run's updates, and final updates are de-duplicated by
    item id.
  - A submit call that failed with UNAVAILABLE (or CANCELLED, which a server
    answers to a call that reaches it as it begins a graceful stop) before
    its reply arrived is sent again whole, with the same ids. Items the first
    attempt got accepted are known to the server by then: it counts them in
    SubmitReply.duplicates and does not run them again.
  - After its update stream was broken (and after a reply that counts
    duplicates), it asks getItems (by id, with results) for the items it is
    still waiting for: what finished while it was not subscribed, perhaps
    in a grpc process that has died since, is read from there.
  - Behind a balancer that says which instance served a call (the header
    x-dosomething-instance, contrib/nginx/dosomething.conf), it moves its
    subscription after its submissions when they land on another instance,
    once the items of the instance it watches are final.
"""
import argparse
import base64
import importlib
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid

import grpc

PROTO_REL = os.path.join("com", "agrounds", "dosomething", "v1", "do_something.proto")
AFFINITY_HEADER = "x-dosomething-affinity"
INSTANCE_HEADER = "x-dosomething-instance"     # set by a balancer: who answered

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_GAVE_UP = 0, 1, 2, 3

FINAL_STATE_NAMES = ("SUCCEEDED", "FAILED", "CANCELLED")
LOOKUP_IDS = 500        # ids per getItems call (the server takes up to 1000)

# Status codes after which a call is worth making again.
RESUMABLE = {
    grpc.StatusCode.UNAVAILABLE,         # server stopping, restarting, unreachable
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # a slow subscriber was cut off
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,            # a proxy reset the stream
    grpc.StatusCode.UNKNOWN,
}

# Status codes after which an unanswered doSomething call is sent again. A
# gRPC C-core server answers CANCELLED to a call that reaches it just as it
# begins a graceful stop; this client never cancels its own submit calls.
RESUBMIT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}

CHANNEL_OPTIONS = [
    # A lost connection is retried after 0.1 s. grpc.min_reconnect_backoff_ms is
    # left at gRPC's 20 s: it is also how long one connection attempt may take
    # (TCP and HTTP/2 handshake), and 100 ms failed calls on a busy machine.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
]


class UsageError(Exception):
    pass


def instance_of(metadata):
    """The instance a balancer says answered a call (the last address of
    nginx's $upstream_addr), or None."""
    for key, value in metadata or ():
        if key == INSTANCE_HEADER:
            return value.split(",")[-1].strip() or None
    return None


def log(msg):
    print(f"dosomething_client: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# stubs
# --------------------------------------------------------------------------

def find_proto(explicit):
    """The .proto file: --proto, $DS_PROTO, or proto/ of the source tree
    this script lives in."""
    if explicit:
        return os.path.abspath(explicit)
    if os.environ.get("DS_PROTO"):
        return os.path.abspath(os.environ["DS_PROTO"])
    here = os.path.dirname(os.path.abspath(__file__))
    for _ in range(6):
        candidate = os.path.join(here, "proto", PROTO_REL)
        if os.path.isfile(candidate):
            return candidate
        here = os.path.dirname(here)
    raise UsageError("cannot find do_something.proto: give --proto FILE or --stubs DIR")


def load_stubs(stubs_dir, proto):
    """(pb, pb_grpc): imported from stubs_dir, or generated from the .proto
    with grpc_tools.protoc into a temporary directory."""
    if stubs_dir:
        sys.path.insert(0, os.path.abspath(stubs_dir))
        try:
            pb = importlib.import_module("com.agrounds.dosomething.v1.do_something_pb2")
            pb_grpc = importlib.import_module("com.agrounds.dosomething.v1.do_something_pb2_grpc")
        except ImportError as e:
            raise UsageError(f"no usable stubs in {stubs_dir}: {e}") from None
        return pb, pb_grpc

    proto = find_proto(proto)
    if not os.path.isfile(proto):
        raise UsageError(f"{proto}: no such file")
    # The include root decides the module path: .../proto/com/agrounds/... gives
    # com.agrounds.dosomething.v1.do_something_pb2, a lone file a top-level module.
    if proto.endswith(os.sep + PROTO_REL):
        root, rel = proto[:-len(PROTO_REL) - 1], PROTO_REL
    else:
        root, rel = os.path.dirname(proto), os.path.basename(proto)
    try:
        from grpc_tools import protoc
        import grpc_tools
    except ImportError:
        raise UsageError("grpc_tools is not installed (Debian: python3-grpc-tools); "
                         "or give --stubs DIR") from None
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    out = tempfile.mkdtemp(prefix="dosomething-stubs-")
    try:
        rc = protoc.main(["grpc_tools.protoc", f"-I{root}", f"-I{well_known}",
                          f"--python_out={out}", f"--grpc_python_out={out}",
                          os.path.join(root, rel)])
        if rc != 0:
            raise UsageError(f"grpc_tools.protoc failed on {proto} (exit {rc})")
        sys.path.insert(0, out)
        module = rel[:-len(".proto")].replace(os.sep, ".")
        pb = importlib.import_module(module + "_pb2")
        pb_grpc = importlib.import_module(module + "_pb2_grpc")
    finally:
        # The modules are loaded; the files are not needed any more.
        import shutil
        shutil.rmtree(out, ignore_errors=True)
        if out in sys.path:
            sys.path.remove(out)
    return pb, pb_grpc


# --------------------------------------------------------------------------
# the item calls: thin wrappers
# --------------------------------------------------------------------------

class Client:
    """getItems, cancel and retry of one server, as plain calls.

        pb, pb_grpc = load_stubs(None, None)
        c = Client(pb, pb_grpc.DoSomethingServiceStub(channel))
        reply = c.get_items(["img-1"], with_results=True)      # an ItemsReply
        c.cancel(batches=["job-1"], reason="not needed")       # a CancelReply
        c.retry(c.dead_letters(batches=["job-1"]))             # a RetryReply

    Each returns the server's reply message as it is and raises
    grpc.RpcError as grpcio does; metadata is sent with every call (the
    balancer affinity header, say). The channel is the caller's to close."""

    def __init__(self, pb, stub, metadata=()):
        self.pb, self.stub, self.metadata = pb, stub, tuple(metadata)

    def get_items(self, ids=(), kinds=(), states=(), batches=(), with_results=False,
                  wait=False, limit=0, page_token="", timeout=None):
        """ItemsReply: the items of ids (unknown ones in not_found), or one
        page of the items matching kinds, states and batches. wait (by ids):
        the reply comes once every known one is final, or the call ends
        DEADLINE_EXCEEDED at timeout."""
        req = self.pb.ItemsRequest(item_ids=list(ids), kinds=list(kinds), states=list(states),
                                   batches=list(batches), with_results=with_results,
                                   wait=wait, limit=limit, page_token=page_token)
        return self.stub.getItems(req, timeout=timeout, metadata=self.metadata)

    def list_items(self, kinds=(), states=(), batches=(), with_results=False, timeout=None):
        """Every item matching the filters, newest accepted first, page after page."""
        token = ""
        while True:
            reply = self.get_items(kinds=kinds, states=states, batches=batches,
                                   with_results=with_results, limit=1000, page_token=token,
                                   timeout=timeout)
            yield from reply.items
            token = reply.next_page_token
            if not token:
                return

    def dead_letters(self, batches=(), kinds=(), timeout=None):
        """The ids of the FAILED items (of these batches and kinds)."""
        return [it.id for it in self.list_items(kinds=kinds, batches=batches,
                                                states=[self.pb.FAILED], timeout=timeout)]

    def cancel(self, ids=(), batches=(), reason="", timeout=None):
        """CancelReply: cancelled, already_final, not_found."""
        req = self.pb.CancelRequest(item_ids=list(ids), batches=list(batches), reason=reason)
        return self.stub.cancel(req, timeout=timeout, metadata=self.metadata)

    def retry(self, ids=(), batches=(), timeout=None):
        """RetryReply: requeued, not_retryable, not_found."""
        req = self.pb.RetryRequest(item_ids=list(ids), batches=list(batches))
        return self.stub.retry(req, timeout=timeout, metadata=self.metadata)


def update_of_item(pb, item):
    """An Update carrying what getItems says of an item (its latest state)."""
    return pb.Update(seq=item.last_seq, item_id=item.id, kind=item.kind, state=item.state,
                     result=item.result, error=item.error, attempt=item.attempt,
                     worker_pid=item.worker_pid, batch=item.batch,
                     cpu_usec=item.cpu_usec, max_rss_kib=item.max_rss_kib)


# --------------------------------------------------------------------------
# input
# --------------------------------------------------------------------------

ITEM_KEYS = {"id", "kind", "payload", "payload_b64", "params", "batch", "timeout_ms",
             "max_attempts"}


def parse_param(text):
    if "=" not in text:
        raise UsageError(f"--param {text!r}: expected KEY=VALUE")
    key, value = text.split("=", 1)
    return key, value


def to_uint32(value, key):
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2 ** 32:
        raise ValueError(f"{key} must be an integer 0..2^32-1")
    return value


def read_items(path, args):
    """The items of the file as dicts of WorkItem fields, each with an id."""
    defaults_params = dict(parse_param(p) for p in args.param)
    if path == "-":
        lines = sys.stdin.buffer.read().split(b"\n")
    else:
        try:
            with open(path, "rb") as f:
                lines = f.read().split(b"\n")
        except OSError as e:
            raise UsageError(f"{path}: {e.strerror}") from None
    items, seen = [], set()
    for lineno, raw in enumerate(lines, 1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        spec = None
        if args.format != "lines" and raw.lstrip().startswith(b"{"):
            try:
                spec = json.loads(raw)
            except ValueError as e:
                if args.format == "jsonl":
                    raise UsageError(f"{path}:{lineno}: not JSON: {e}") from None
            if spec is not None and not isinstance(spec, dict):
                spec = None
        elif args.format == "jsonl":
            raise UsageError(f"{path}:{lineno}: not a JSON object")
        item = {"kind": args.kind, "params": dict(defaults_params), "batch": args.batch,
                "timeout_ms": args.timeout_ms, "max_attempts": args.max_attempts}
        if spec is None:
            item["payload"] = raw
        else:
            unknown = set(spec) - ITEM_KEYS
            if unknown:
                raise UsageError(f"{path}:{lineno}: unknown key(s) {sorted(unknown)}; "
                                 f"known: {sorted(ITEM_KEYS)}")
            try:
                if "payload_b64" in spec:
                    item["payload"] = base64.b64decode(spec["payload_b64"], validate=True)
                else:
                    item["payload"] = str(spec.get("payload", "")).encode()
                if "params" in spec:
                    if not isinstance(spec["params"], dict):
                        raise ValueError("params must be an object")
                    item["params"].update({str(k): v if isinstance(v, str) else json.dumps(v)
                                           for k, v in spec["params"].items()})
                for key in ("id", "kind", "batch"):
                    if key in spec:
                        item[key] = str(spec[key])
                for key in ("timeout_ms", "max_attempts"):
                    if key in spec:
                        item[key] = to_uint32(spec[key], key)
            except (ValueError, TypeError) as e:
                raise UsageError(f"{path}:{lineno}: {e}") from None
        if not item.get("id"):
            item["id"] = f"{args.batch}-{len(items)}"
        if item["id"] in seen:
            raise UsageError(f"{path}:{lineno}: duplicate id {item['id']!r}")
        seen.add(item["id"])
        items.append(item)
    return items


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------

class Backoff:
    def __init__(self, low=0.1, high=2.0):
        self.low, self.high, self.next = low, high, low

    def reset(self):
        self.next = self.low

    def delay(self):
        d = self.next * random.uniform(0.8, 1.2)
        self.next = min(self.high, self.next * 2)
        return d


class Run:
    def __init__(self, pb, pb_grpc, args, items):
        self.pb, self.args, self.items = pb, args, items
        self.deadline = time.monotonic() + args.deadline
        self.channel = grpc.insecure_channel(args.address, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.DoSomethingServiceStub(self.channel)
        self.batches = sorted({it["batch"] for it in items}) or [args.batch]
        self.metadata = () if args.no_affinity else ((AFFINITY_HEADER, args.batch),)
        self.ids = {it["id"] for it in items}
        self.client = Client(pb, self.stub, self.metadata)
        self.final_states = {pb.State.Value(n) for n in FINAL_STATE_NAMES}

        self.cond = threading.Condition()
        self.out_lock = threading.Lock()
        self.accepted = set()       # ids the server has (accepted or duplicate, in a reply)
        self.sent = set()           # ids sent at least once
        self.counts = {"accepted": 0, "duplicates": 0, "rejected": 0}  # SubmitReply sums
        self.looked_up = 0          # finals learned from getItems, not from the stream
        self.lookups = 0            # getItems calls made
        self.lookup_after_subscribe = False  # the stream broke: look up what is open
        self.no_lookups = False     # the server has no getItems (UNIMPLEMENTED)
        self.elsewhere = set()      # duplicates in batches the stream does not watch
        self.waiter = None          # the thread that waits for those with getItems
        self.final = {}             # id -> final update (the first one)
        self.rejected = {}          # id -> reason
        self.submitted_open = set() # sent, final not seen yet (for --window)
        self.submitting = True
        self.duplicates = 0
        self.retries_seen = 0
        self.reconnects = 0
        self.resubmits = 0
        self.fatal = None           # a reason to give up
        self.subscribed = False     # a getUpdates call is open and registered
        self.from_zero = False      # the next subscription replays from seq 0
        self.last_seq = 0
        self.call = None
        self.closing = False
        self.watch_instance = None  # where the open subscription is, if a balancer says
        self.item_instance = {}     # id -> where it was accepted, if a balancer says
        self.switch_to = None       # submissions now land there
        self.switching = False
        self.switches = 0
        self.last_reconnect_log = 0.0
        self.watcher = threading.Thread(target=self.watch, name="watch", daemon=True)

    def left(self):
        return self.deadline - time.monotonic()

    # ---- output ---------------------------------------------------------

    def emit(self, record):
        line = json.dumps(record) + "\n"
        with self.out_lock:
            sys.stdout.write(line)
            sys.stdout.flush()

    def emit_update(self, u, looked_up=False):
        rec = {"id": u.item_id, "state": self.pb.State.Name(u.state), "kind": u.kind,
               "batch": u.batch, "seq": u.seq, "attempt": u.attempt,
               "worker_pid": u.worker_pid}
        if looked_up:
            rec["looked_up"] = True
        if u.state == self.pb.SUCCEEDED:
            try:
                rec["result"] = u.result.decode("utf-8")
            except UnicodeDecodeError:
                pass
            rec["result_b64"] = base64.b64encode(u.result).decode()
        else:
            rec["error"] = u.error
        self.emit(rec)

    # ---- watching -------------------------------------------------------

    def watch(self):
        backoff = Backoff()
        pb = self.pb
        while True:
            with self.cond:
                if self.closing or self.fatal:
                    return
                after = 0 if self.from_zero else self.last_seq
            if self.left() <= 0:
                return
            req = pb.UpdatesRequest(replay=True, after_seq=after, batches=self.batches,
                                    states=[pb.SUCCEEDED, pb.FAILED, pb.CANCELLED,
                                            pb.RETRYING])
            call = self.stub.getUpdates(req, timeout=self.left(), metadata=self.metadata)
            with self.cond:
                self.call = call
                if self.closing:
                    call.cancel()
            ended_ok, error, had_subscription = False, None, False
            try:
                # The daemon sends the headers once the subscriber is registered:
                # from then on nothing submitted can be missed.
                metadata = call.initial_metadata()
                if not call.done():
                    had_subscription = True
                    with self.cond:
                        self.subscribed = True
                        self.from_zero = False
                        self.switching = False
                        self.watch_instance = instance_of(metadata)
                        self.maybe_switch()
                        self.cond.notify_all()
                        lookup = self.lookup_after_subscribe
                        self.lookup_after_subscribe = False
                        waiting_for = self.waiting_for()
                    # Subscribed again after a break: what finished meanwhile
                    # (perhaps in a grpc process that died since) is in getItems;
                    # what finishes from now on comes on this stream.
                    if lookup and not self.lookup(waiting_for):
                        with self.cond:
                            self.lookup_after_subscribe = True
                for u in call:
                    backoff.reset()
                    self.on_update(u)
                    if self.finished():
                        return
                ended_ok = True
            except grpc.RpcError as e:
                error = e
            finally:
                with self.cond:
                    self.subscribed = False
                    self.call = None
                    self.cond.notify_all()
            with self.cond:
                if self.closing:
                    return
                if self.switching and error is not None \
                        and error.code() == grpc.StatusCode.CANCELLED:
                    why = f"following the submissions to {self.switch_to}"
                elif ended_ok:
                    # The server ended the stream: it is stopping. The next one
                    # may number its updates from 1 again.
                    self.from_zero = True
                    why = "the server ended the stream"
                else:
                    code = error.code()
                    if code == grpc.StatusCode.DEADLINE_EXCEEDED or self.left() <= 0:
                        return
                    if code not in RESUMABLE and code != grpc.StatusCode.CANCELLED:
                        self.fatal = f"getUpdates: {code.name}: {error.details()}"
                        self.cond.notify_all()
                        return
                    why = f"{code.name}: {error.details()}"
                if not self.switching:
                    self.reconnects += 1
                if had_subscription:
                    self.lookup_after_subscribe = True
                after = 0 if self.from_zero else self.last_seq
            delay = min(backoff.delay(), max(0.0, self.left()))
            if not self.args.quiet and (had_subscription
                                        or time.monotonic() - self.last_reconnect_log >= 5):
                self.last_reconnect_log = time.monotonic()
                log(f"getUpdates ended ({why}); resubscribing with replay after seq {after} "
                    f"in {delay:.2f} s")
            time.sleep(delay)

    def on_update(self, u):
        pb = self.pb
        with self.cond:
            self.last_seq = u.seq
            if u.item_id not in self.ids:
                return          # another run's item in a shared batch
            if u.state == pb.RETRYING:
                self.retries_seen += 1
                if self.args.verbose:
                    log(f"{u.item_id} retrying: {u.error}")
                return
        self.on_final(u)

    def on_final(self, u, looked_up=False):
        """A final update of one of our items, from the stream or getItems:
        printed if it is the first for its id."""
        with self.cond:
            if u.item_id in self.final:
                if not looked_up:
                    self.duplicates += 1
                return
            if looked_up:
                self.looked_up += 1
            self.final[u.item_id] = u
            self.submitted_open.discard(u.item_id)
            self.maybe_switch()
            # A resent call may have been rejected (say, queue full) while the
            # unanswered first attempt got the item accepted: it ran after all.
            if self.rejected.pop(u.item_id, None) is not None:
                self.accepted.add(u.item_id)
            self.cond.notify_all()
        self.emit_update(u, looked_up)

    # ---- looking up -----------------------------------------------------

    def waiting_for(self):
        """(Under the lock.) Ids sent and not known to be final or rejected."""
        return sorted(self.sent - self.final.keys() - self.rejected.keys())

    def lookup(self, ids):
        """Ask getItems for ids (with results): record the finals among
        them; ids of batches the stream does not watch that are not final
        yet are waited for by the waiter thread. False if a call failed (the
        caller tries again later)."""
        if self.no_lookups or not ids:
            return True
        todo = [ids[i:i + LOOKUP_IDS] for i in range(0, len(ids), LOOKUP_IDS)]
        while todo:
            part = todo.pop()
            try:
                with self.cond:
                    self.lookups += 1
                reply = self.client.get_items(part, with_results=True,
                                              timeout=max(1.0, min(30.0, self.left())))
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and len(part) > 1:
                    half = len(part) // 2       # the results do not fit one reply
                    todo += [part[:half], part[half:]]
                    continue
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    self.no_lookups = True      # an older server: the stream only
                    return True
                if not self.args.quiet:
                    log(f"getItems of {len(part)} items failed: {e.code().name}: "
                        f"{e.details()}; looking them up again later")
                return False
            for item in reply.items:
                if item.state in self.final_states:
                    self.on_final(update_of_item(self.pb, item), looked_up=True)
                elif item.batch not in self.batches:
                    self.wait_elsewhere(item.id)
        return True

    def wait_elsewhere(self, item_id):
        """A duplicate of an item in another batch (a run sent it before):
        its updates do not come on our stream, so wait for it with getItems."""
        with self.cond:
            self.elsewhere.add(item_id)
            if self.waiter is None:
                self.waiter = threading.Thread(target=self.wait_loop, name="wait", daemon=True)
                self.waiter.start()
            self.cond.notify_all()

    def wait_loop(self):
        backoff = Backoff()
        while True:
            with self.cond:
                while not self.elsewhere - self.final.keys():
                    if self.closing or self.fatal or self.left() <= 0:
                        return
                    self.cond.wait(0.5)
                ids = sorted(self.elsewhere - self.final.keys())[:LOOKUP_IDS]
            if self.closing or self.left() <= 0:
                return
            try:
                reply = self.client.get_items(ids, with_results=True, wait=True,
                                              timeout=max(0.1, min(30.0, self.left())))
                backoff.reset()
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    time.sleep(min(backoff.delay(), max(0.0, self.left())))
                continue
            for item in reply.items:
                if item.state in self.final_states:
                    self.on_final(update_of_item(self.pb, item), looked_up=True)

    def maybe_switch(self):
        """(Under the lock.) Behind a balancer with affinity, a run's calls
        can move to another instance while its subscription stays where it
        is: an instance it had left came back, say. Once every item accepted
        where the subscription is has its final update, subscribe again
        (replaying from 0), which lands where the submissions go."""
        if (self.switch_to is None or self.switching or not self.subscribed
                or self.call is None or self.watch_instance is None):
            return
        if self.switch_to == self.watch_instance:
            self.switch_to = None
            return
        for item_id, where in self.item_instance.items():
            if where == self.watch_instance and item_id not in self.final:
                return
        self.switching = True
        self.from_zero = True
        self.switches += 1
        self.call.cancel()

    def finished(self):
        with self.cond:
            return not self.submitting and self.accepted.issubset(self.final.keys())

    # ---- submitting -----------------------------------------------------

    def wait(self, predicate, what):
        """Until predicate() (under the lock); False if the run must stop."""
        with self.cond:
            while not predicate():
                if self.fatal:
                    return False
                left = self.left()
                if left <= 0:
                    log(f"gave up after {self.args.deadline} s waiting for {what}")
                    return False
                if not self.watcher.is_alive():
                    self.fatal = "the getUpdates watcher stopped"
                    return False
                self.cond.wait(min(left, 0.5))
        return True

    def submit_all(self):
        args, pb = self.args, self.pb
        chunks = [self.items[i:i + args.chunk] for i in range(0, len(self.items), args.chunk)]
        for n, chunk in enumerate(chunks):
            window = args.window
            if window and not self.wait(
                    lambda: len(self.submitted_open) + len(chunk) <= max(window, len(chunk)),
                    "room in the window"):
                return False
            messages = [pb.WorkItem(id=it["id"], kind=it["kind"], payload=it["payload"],
                                    params=it["params"], batch=it["batch"],
                                    timeout_ms=it["timeout_ms"],
                                    max_attempts=it["max_attempts"]) for it in chunk]
            backoff = Backoff()
            while True:
                # Submit only while subscribed, so that no update can be missed.
                if not self.wait(lambda: self.subscribed, "a getUpdates subscription"):
                    return False
                with self.cond:
                    self.sent.update(it["id"] for it in chunk)
                    self.submitted_open.update(it["id"] for it in chunk
                                               if it["id"] not in self.final)
                try:
                    reply, call = self.stub.doSomething.with_call(
                        iter(messages), timeout=max(1.0, self.left()), metadata=self.metadata)
                    where = instance_of(call.initial_metadata())
                    break
                except grpc.RpcError as e:
                    code = e.code()
                    if code not in RESUBMIT or self.left() <= 0:
                        with self.cond:
                            self.fatal = f"doSomething: {code.name}: {e.details()}"
                            self.cond.notify_all()
                        return False
                    with self.cond:
                        # Unanswered: maybe none, maybe all of it was accepted.
                        # Sent again with the same ids, what was accepted counts
                        # in duplicates. The server may be a new one with its
                        # own seqs.
                        self.from_zero = True
                        self.resubmits += 1
                    delay = min(backoff.delay(), max(0.0, self.left()))
                    if not args.quiet:
                        log(f"doSomething (call {n + 1}/{len(chunks)}, {len(chunk)} items) "
                            f"failed: {code.name}: {e.details()}; sending it again in "
                            f"{delay:.2f} s")
                    time.sleep(delay)
            rejected_at = {r.index: r.reason for r in reply.rejections}
            if reply.rejected and len(rejected_at) < reply.rejected:
                log(f"the server listed {len(rejected_at)} of {reply.rejected} rejections")
            with self.cond:
                self.counts["accepted"] += reply.accepted
                self.counts["duplicates"] += reply.duplicates
                self.counts["rejected"] += reply.rejected
                for i, it in enumerate(chunk):
                    if i in rejected_at:
                        self.submitted_open.discard(it["id"])
                        if it["id"] not in self.final:
                            self.rejected[it["id"]] = rejected_at[i]
                    else:
                        self.accepted.add(it["id"])
                        self.rejected.pop(it["id"], None)
                        if where is not None:
                            self.item_instance[it["id"]] = where
                if where is not None and self.watch_instance is not None \
                        and where != self.watch_instance:
                    if self.switch_to != where and not args.quiet:
                        log(f"calls now land on {where}, the subscription is on "
                            f"{self.watch_instance}: moving it once the items there are final")
                    self.switch_to = where
                self.maybe_switch()
            for i in sorted(rejected_at):
                it = chunk[i]
                if it["id"] not in self.final:
                    self.emit({"id": it["id"], "state": "REJECTED", "kind": it["kind"],
                               "batch": it["batch"], "error": rejected_at[i]})
            if reply.duplicates:
                # Items the server had already (an unanswered attempt of this
                # call, or an earlier run): some may be final, their updates
                # published before this subscription, or in another batch.
                with self.cond:
                    ids = [it["id"] for i, it in enumerate(chunk)
                           if i not in rejected_at and it["id"] not in self.final]
                if not self.lookup(ids):
                    with self.cond:
                        self.lookup_after_subscribe = True
        with self.cond:
            self.submitting = False
            self.cond.notify_all()
        return True

    # ---- all of it --------------------------------------------------------

    def run(self):
        started = time.monotonic()
        self.watcher.start()
        ok = self.submit_all()
        if ok:
            ok = self.wait(lambda: self.accepted.issubset(self.final.keys()),
                           "the final updates")
        with self.cond:
            self.closing = True
            if self.call is not None:
                self.call.cancel()
        self.watcher.join(timeout=5)
        self.channel.close()
        return self.summarize(time.monotonic() - started)

    def summarize(self, elapsed):
        pb = self.pb
        with self.cond:
            succeeded = sum(1 for u in self.final.values() if u.state == pb.SUCCEEDED)
            failed = sum(1 for u in self.final.values() if u.state == pb.FAILED)
            cancelled = sum(1 for u in self.final.values() if u.state == pb.CANCELLED)
            open_ids = sorted(self.accepted - self.final.keys())
            unsent = len(self.ids) - len(self.accepted) - len(self.rejected)
            summary = {
                "items": len(self.items), "accepted": self.counts["accepted"],
                "duplicates": self.counts["duplicates"], "rejected": self.counts["rejected"],
                "succeeded": succeeded, "failed": failed, "cancelled": cancelled,
                "open": len(open_ids), "not_submitted": unsent, "looked_up": self.looked_up,
                "lookups": self.lookups,
                "duplicates_ignored": self.duplicates, "retrying_updates": self.retries_seen,
                "reconnects": self.reconnects, "resubmitted_calls": self.resubmits,
                "switches": self.switches,
                "batch": self.args.batch, "seconds": round(elapsed, 3),
            }
            if open_ids:
                summary["open_ids"] = open_ids[:10]
            if self.fatal:
                summary["error"] = self.fatal
        print("summary: " + json.dumps(summary), file=sys.stderr, flush=True)
        if self.fatal or open_ids or unsent:
            return EXIT_GAVE_UP
        if failed or cancelled or self.rejected:
            return EXIT_FAILED
        return EXIT_OK


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Submit work items from a file to dosomethingd and print their final "
                    "updates as JSON lines.")
    p.add_argument("file", help="items, one per line: a raw payload or a JSON object "
                                "(id, kind, payload, payload_b64, params, batch, timeout_ms, "
                                "max_attempts); - for standard input")
    p.add_argument("--address", default=os.environ.get("DS_ADDRESS", "127.0.0.1:8080"),
                   help="host:port of dosomethingd or of a balancer (default %(default)s)")
    p.add_argument("--stubs", help="directory with com/agrounds/dosomething/v1/"
                                   "do_something_pb2*.py (default: generate them)")
    p.add_argument("--proto", help="do_something.proto to generate stubs from "
                                   "(default: proto/ of this source tree, or $DS_PROTO)")
    p.add_argument("--format", choices=("auto", "lines", "jsonl"), default="auto",
                   help="auto: a line starting with { is a JSON item, others raw payloads")
    p.add_argument("--kind", default="", help="kind of items that name none "
                                              "(default: the server's default handler)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a handler parameter for every item (repeatable)")
    p.add_argument("--timeout-ms", type=int, default=0, help="per item; 0: the handler's")
    p.add_argument("--max-attempts", type=int, default=0, help="per item; 0: the server's")
    p.add_argument("--batch", default=None,
                   help="batch label of items that name none, and the balancer affinity "
                        "key (default: a new unique label)")
    p.add_argument("--chunk", type=int, default=500,
                   help="items per doSomething call, 1..1000 (default %(default)s)")
    p.add_argument("--window", type=int, default=0,
                   help="at most this many submitted items without a final update "
                        "(0: no limit; the server's queue pushes back anyway)")
    p.add_argument("--deadline", type=float, default=600,
                   help="give up after this many seconds (default %(default)s)")
    p.add_argument("--no-affinity", action="store_true",
                   help=f"do not send the {AFFINITY_HEADER} header that lets a balancer "
                        "keep this run on one instance")
    p.add_argument("--quiet", action="store_true", help="no reconnect messages on stderr")
    p.add_argument("--verbose", action="store_true", help="also log RETRYING updates")
    args = p.parse_args(argv)
    if args.batch is None:
        args.batch = f"client-{uuid.uuid4().hex[:16]}"
    if not 1 <= args.chunk <= 1000:
        p.error("--chunk must be 1..1000 (the server lists at most 1000 rejections a call)")
    if args.deadline <= 0 or args.window < 0:
        p.error("--deadline must be positive and --window not negative")
    try:
        pb, pb_grpc = load_stubs(args.stubs, args.proto)
        items = read_items(args.file, args)
    except UsageError as e:
        log(str(e))
        return EXIT_USAGE
    if not items:
        log(f"{args.file}: no items")
        return EXIT_USAGE
    return Run(pb, pb_grpc, args, items).run()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
