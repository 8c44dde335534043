"""
Chaos in cluster mode (docs/scaling.md, "Cluster mode" and "What it
guarantees"): three instances on one Redis, one cluster name, lease 1 s,
2 workers each, under a steady load of ~3000 items, while

- one instance is SIGKILLed with all its processes (kill_everything) and a
  new one with the same cluster name is started in its place;
- the grpc process of another is SIGSTOPped for 4 lease times, then
  SIGCONTed: the items it held are taken over by the others, and the
  updates it sends when it wakes (its workers ran on) are dropped;
- a third is reloaded (SIGHUP, with workers.count 2 -> 3).

The load: doSomething streams of 10 to 60 items, each to an instance drawn
at random, every item with a client-chosen id: quick echo items, sleep
items of a few ms, some prioritized, some delayed, some of the retry test
module that ask for another attempt and then succeed, and some designed to
fail (an error at once, or asking for more attempts than they may have).
A call that fails (UNAVAILABLE, its stream broken by the kill, or its
deadline passed on the stopped instance) is resent, same ids, to another
instance: what Redis already took counts as duplicates, the rest is
accepted.

Afterwards a subscriber replaying from seq 0 on a surviving instance must
see, for every id ever accepted, exactly one QUEUED and exactly one final
update (SUCCEEDED; FAILED only for the items designed to fail), nothing
after it, seqs strictly increasing; getItems on another surviving instance
agrees with that final; the replies of the calls add up; and no process
died that the test did not kill, nothing in the logs says crash, assert or
sanitizer.

DS_CHAOS_SEED=N replays the same load and choice of instances (the timing
is the daemon's own); DS_CHAOS_STOP=S stops b's grpc process S seconds.

Then what the chaos found, each on its own: a takeover past max_attempts
(FAILED of the attempt that stopped), a delayed item whose accept batch
waited (starts after getItems's accepted + delay), a rolling reload of
cluster.lease (a live instance's items were taken over), and a copy that
was never stopped while its entry was taken over and came back (its
final was dropped as superseded: it ran again, or ended FAILED).
"""
import collections
import os
import random
import re
import signal
import threading
import time

import grpc
import conftest
import pytest

from conftest import (CANCELLED, FAILED, FINAL_STATES, QUEUED, RETRYING, SUCCEEDED, deep_merge,
                      free_port, is_probe, state_name)
from test_cluster import (cluster_name, cluster_status, kill_everything, redis,  # noqa: F401
                          start_instance, wait_work_empty)
from test_cluster_scheduling import retry_module  # noqa: F401

LEASE = "1s"
LEASE_S = 1.0
ITEMS = 3000
PRODUCERS = 3
RATE = 100                  # items per second each producer sends
MAX_ATTEMPTS = 8            # takeovers cost attempts too: the items meant to succeed must
CALL_TIMEOUT = 2            # seconds: a call to the stopped instance ends DEADLINE_EXCEEDED
RESEND_FOR = 30             # seconds a batch may take to be resent until some instance takes it
STOP_FOR = float(os.environ.get("DS_CHAOS_STOP", "4.0"))             # seconds the grpc process is stopped (4 leases)
DRAIN_TIMEOUT = 30
RESENDABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
              grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)

# Lines a healthy instance never logs; and the master's line for a child's
# death (as in test_chaos.py).
CRASH = re.compile(r".*(crash|assert|ASan|AddressSanitizer|LeakSanitizer|sanitizer|"
                   r"runtime error:|SIGSEGV|SIGABRT|core dumped).*", re.IGNORECASE)
DEATH = re.compile(r"(?P<role>worker|grpc process)(?: \d+)? \(pid (?P<pid>\d+)\) "
                   r"(?:killed by signal (?P<signal>\d+)|exited with status (?P<status>\d+)).*")


def config(module, workers=2):
    return {"workers": {"count": workers},
            "queue": {"max_attempts": MAX_ATTEMPTS,
                      "retry_backoff": {"min": "50ms", "max": "400ms"}},
            "handlers": {"default": "echo", "echo": {"builtin": "echo"},
                         "sleep": {"builtin": "sleep"}, "r": {"module": str(module)}},
            "respawn": {"crash_limit": 100}}


def make_items(rng, tag, n):
    """N items, and {id: 'succeed' | 'fail'}: what each is meant to end as."""
    items, meant = [], {}
    for i in range(n):
        item_id = f"{tag}-{i}"
        r = rng.random()
        it = {"id": item_id}
        if r < 0.45:
            it.update(kind="echo", payload=f"echo {item_id}".encode())
        elif r < 0.76:
            it.update(kind="sleep", params={"ms": str(rng.randint(2, 8))})
        elif r < 0.80:          # long enough to be running at a kill or a stop
            it.update(kind="sleep", params={"ms": str(rng.randint(100, 300))})
        elif r < 0.88:          # asks for a second attempt, then succeeds
            it.update(kind="r", payload=b"r", params={"retry_until": "2"})
        elif r < 0.94:          # fails at once
            it.update(kind="r", params={"error": "meant to fail"})
            meant[item_id] = "fail"
        else:                   # asks for more attempts than it may have
            it.update(kind="r", params={"retry_until": "100"}, max_attempts=2)
            meant[item_id] = "fail"
        meant.setdefault(item_id, "succeed")
        if rng.random() < 0.15:
            it["priority"] = rng.choice([-3, -1, 1, 2, 5, 100])
        r = rng.random()
        if r < 0.10:
            it["delay_ms"] = rng.randint(1, 300)
        elif r < 0.12:          # still waiting at the kill or the stop
            it["delay_ms"] = rng.randint(500, 2000)
        items.append(it)
    return items, meant


class Producer:
    """Submits the items in streams to random live instances; resends a
    failed call with the same ids to another instance until one answers."""

    def __init__(self, rng, items, pick):
        self.rng = rng
        self.items = items
        self.pick = pick                # (exclude) -> a Daemon
        self.replies = []               # (ids, reply, instance name, resend number)
        self.failures = collections.Counter()   # status code -> calls that failed
        self.resends = 0
        self.clients = {}               # instance name -> its Client (one channel each)
        self.error = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="producer", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _run(self):
        try:
            pos = 0
            while pos < len(self.items):
                n = self.rng.randint(10, 60)
                self._send(self.items[pos:pos + n])
                pos += n
        except Exception as e:  # noqa: BLE001 - reported to the test
            self.error = e
        finally:
            self.done.set()

    def _stream(self, batch):
        """The items of a call, paced at RATE per producer: the streams are
        open most of the time, so a kill or a stop catches some half sent."""
        t0 = time.monotonic()
        for n, it in enumerate(batch):
            time.sleep(max(0.0, t0 + n / RATE - time.monotonic()))
            yield it

    def _send(self, batch):
        deadline = time.monotonic() + RESEND_FOR
        last = None
        tries = 0
        while True:
            d = self.pick(exclude=last)
            try:
                if d.name not in self.clients:
                    self.clients[d.name] = d.client()
                reply = self.clients[d.name].submit(self._stream(batch), timeout=CALL_TIMEOUT)
                self.replies.append(([it["id"] for it in batch], reply, d.name, tries))
                return
            except grpc.RpcError as e:
                code = e.code()
                self.failures[(d.name, str(code))] += 1
                if code not in RESENDABLE or time.monotonic() > deadline:
                    raise AssertionError(f"submit to {d.name} failed with {code}: "
                                         f"{e.details()}") from None
            last = d
            tries += 1
            self.resends += 1
            time.sleep(0.05)


def brief(u):
    return None if u is None else (u.seq, u.item_id, state_name(u.state), u.attempt)


def unexpected_deaths(name, log, killed):
    """The master's death lines in LOG (of instance NAME) that the test did
    not cause: a pid we SIGKILLed, a worker retired by the reload (status 0)."""
    out = []
    for m in DEATH.finditer(log):
        if m.group("status") == "0" and m.group("role") == "worker":
            continue
        if m.group("signal") == "9" and int(m.group("pid")) in killed:
            continue
        out.append(f"{name}: {m.group(0)}")
    return out


@pytest.mark.deadline(90)
def test_cluster_survives_kill_stop_and_reload_under_load(redis, start_daemon,  # noqa: F811
                                                         retry_module, capsys):  # noqa: F811
    seed = int(os.environ.get("DS_CHAOS_SEED") or random.SystemRandom().randrange(1 << 32))
    rng = random.Random(seed)
    with capsys.disabled():
        print(f"\n[cluster chaos] seed {seed} (DS_CHAOS_SEED={seed} replays the load)")
    name = cluster_name()
    conf = config(retry_module)
    status = {}                         # instance name -> its status page's address

    def start(n):
        status[n] = f"127.0.0.1:{free_port()}"
        return start_instance(start_daemon, redis, name, n, lease=LEASE,
                              overrides=deep_merge(conf, {"status": {"listen": status[n]}}))
    instances = {n: start(n) for n in ("a", "b", "c")}
    # Subscribers open through the chaos (replaying from 0): the one on b
    # across its stop, the one on d from its start; each must get what
    # the replay at the end gets, in the same order with the same seqs.
    watchers = [instances[n].client().subscribe(replay=True, name=f"live-{n}") for n in "bc"]
    live = dict(instances)              # the ones the producer may pick
    lock = threading.Lock()
    pick_rng = random.Random(rng.random())

    def pick(exclude=None):
        with lock:
            choice = [d for d in live.values() if d is not exclude] or list(live.values())
            return pick_rng.choice(choice)

    items, meant = make_items(random.Random(rng.random()), f"cc-{name}", ITEMS)
    by_id = {it["id"]: it for it in items}
    share = -(-len(items) // PRODUCERS)
    producers = [Producer(random.Random(rng.random()), items[k:k + share], pick).start()
                 for k in range(0, len(items), share)]
    killed = set()
    actions = []
    t0 = time.monotonic()

    def act(what):
        actions.append(f"{time.monotonic() - t0:.1f}s {what}")

    # 1. SIGKILL a (all its processes), start d in its place.
    time.sleep(1.5)
    a = instances["a"]
    with lock:
        del live["a"]
    a_pids = [p for p in [a.grpc_pid(), a.master_pid] + a.worker_pids() if p is not None]
    killed.update(a_pids)
    # what a logged before the kill: its master may see its grpc process
    # die and say so (respawning it, "crash 1 of ...") before it dies itself
    a_log = a.log_text()
    kill_everything(a)
    act(f"killed a {a_pids}")
    d = start("d")
    watchers.append(d.client().subscribe(replay=True, name="live-d"))
    instances["d"] = d
    with lock:
        live["d"] = d
    act("started d")

    # 2. SIGSTOP b's grpc process for STOP_FOR s (4 leases); 3. reload c meanwhile.
    b, c = instances["b"], instances["c"]
    b_grpc = b.grpc_pid()
    assert b_grpc is not None, b.children()
    os.kill(b_grpc, signal.SIGSTOP)
    act(f"stopped b's grpc process {b_grpc}")
    try:
        time.sleep(1.0)
        c.write_config(deep_merge(c.config, {"workers": {"count": 3}}))
        c.send_signal(signal.SIGHUP)
        act("reloaded c (workers 3)")
        time.sleep(STOP_FOR - 1.0)
    finally:
        os.kill(b_grpc, signal.SIGCONT)
    act(f"continued b's grpc process {b_grpc}")

    for p in producers:
        p.done.wait(timeout=max(0.1, t0 + 60 - time.monotonic()))
    assert all(p.done.is_set() for p in producers), \
        f"the producers did not finish in 60 s; actions {actions}"
    act("producers done")
    context = f"seed {seed}; actions {actions}"
    errors = [p.error for p in producers if p.error is not None]
    assert not errors, f"producer: {errors}; {context}"
    replies = [r for p in producers for r in p.replies]
    failures = sum((p.failures for p in producers), collections.Counter())
    resends = sum(p.resends for p in producers)

    # ---- the replies add up --------------------------------------------------
    submitted = set()
    accepted_total = 0
    rejections = []
    for ids, reply, inst, tries in replies:
        submitted.update(ids)
        accepted_total += reply.accepted
        assert reply.accepted + reply.duplicates + reply.rejected == len(ids), \
            f"{inst}: a reply that does not add up for {len(ids)} items: {reply}; {context}"
        if tries == 0:
            assert reply.duplicates == 0, \
                f"{inst}: {reply.duplicates} duplicates in a first send of new ids: " \
                f"{ids[:3]}...; {context}"
        rejections += [(inst, r.id, r.reason) for r in reply.rejections]
    assert submitted == set(by_id), f"{len(set(by_id) - submitted)} items never sent; {context}"
    assert not rejections, f"items rejected: {rejections[:5]}; {context}"

    # ---- replay on a survivor: one QUEUED and one final per item -----------------
    survivors = [c, d, b]
    sub = survivors[0].client().subscribe(replay=True, name="replay-c")
    try:
        sub.wait_final(submitted, timeout=DRAIN_TIMEOUT)
    except AssertionError as e:
        missing = sorted(submitted - set(sub.final))[:10]
        raise AssertionError(f"{e}; e.g. {[(i, sub.states_of(i)) for i in missing[:5]]}; "
                             f"{context}") from None
    wait_work_empty(redis, name, timeout=10)
    time.sleep(2 * LEASE_S)             # any late (stale) update has time to show up
    sub.assert_seq_increasing()
    ups = sub.snapshot()
    seen = {u.item_id for u in ups}
    unknown = sorted(i for i in seen - submitted if not is_probe(i))
    assert not unknown, f"updates of items never submitted: {unknown[:5]}; {context}"

    per_id = collections.defaultdict(list)
    for u in ups:
        per_id[u.item_id].append(u)
    two_queued, two_finals, after_final, wrong_end, wrong_result = [], [], [], [], []
    bad_attempts = []
    for item_id in sorted(seen):
        lst = per_id[item_id]
        states = [u.state for u in lst]
        if states.count(QUEUED) != 1:
            two_queued.append((item_id, [state_name(s) for s in states]))
        finals = [n for n, s in enumerate(states) if s in FINAL_STATES]
        if len(finals) != 1:
            two_finals.append((item_id, [(u.seq, state_name(u.state), u.attempt, u.worker_pid)
                                         for u in lst]))
        elif finals[0] != len(lst) - 1:
            after_final.append((item_id, [state_name(s) for s in states]))
        if is_probe(item_id) or not finals:
            continue
        # attempts never go back, and never past the item's max_attempts
        attempts = [u.attempt for u in lst if u.state != QUEUED]
        cap = by_id[item_id].get("max_attempts", MAX_ATTEMPTS)
        # QUEUED first; after RETRYING of attempt N, attempt N + 1
        after_retrying = all(nxt.attempt == u.attempt + 1 for u, nxt in zip(lst, lst[1:])
                             if u.state == RETRYING)
        if attempts != sorted(attempts) or (attempts and not 1 <= attempts[-1] <= cap) \
                or states[0] != QUEUED or not after_retrying:
            bad_attempts.append((item_id, [(state_name(u.state), u.attempt) for u in lst]))
        final = lst[finals[-1]]
        want = SUCCEEDED if meant[item_id] == "succeed" else FAILED
        if final.state != want:
            wrong_end.append((item_id, state_name(final.state), final.attempt, final.error,
                              [state_name(s) for s in states]))
        elif final.state == SUCCEEDED and by_id[item_id].get("kind") == "echo" \
                and final.result != by_id[item_id]["payload"]:
            wrong_result.append((item_id, final.result[:40]))

    accepted_ids = {i for i in seen if not is_probe(i)}
    # Every item was sent until some call answered for it: accepted there,
    # or a duplicate of what an earlier (failed) call got into Redis.
    assert accepted_ids == submitted, \
        f"{len(submitted - accepted_ids)} items answered for but never QUEUED: " \
        f"{sorted(submitted - accepted_ids)[:5]}; {context}"
    assert accepted_total <= len(submitted), (accepted_total, len(submitted))

    counters = {inst.name: {k: v for k, v in cluster_status(status[inst.name]).items()
                            if k in ("claimed", "superseded", "lost_updates", "reconnects")}
                for inst in (b, c, d)}
    retrying = [u for u in ups if u.state == RETRYING]
    takeovers = [u for u in retrying if "stopped renewing" in u.error]
    summary = (f"[cluster chaos] seed {seed}: items {len(submitted)}, calls "
               f"{len(replies)}, resends {resends}, accepted by answered calls "
               f"{accepted_total}, failed calls {dict(failures)}, updates {len(ups)}, "
               f"RETRYING {len(retrying)} (takeovers {len(takeovers)}), "
               f"FAILED {sum(1 for i in submitted if sub.final[i].state == FAILED)}, "
               f"CANCELLED {sum(1 for i in submitted if sub.final[i].state == CANCELLED)}; "
               f"cluster counters {counters}; "
               f"actions {actions}")
    with capsys.disabled():
        print(summary)

    assert not two_finals, f"{len(two_finals)} items without exactly one final: " \
        f"{two_finals[:3]}; {context}"
    assert not two_queued, f"{len(two_queued)} items without exactly one QUEUED: " \
        f"{two_queued[:3]}; {context}"
    assert not after_final, f"{len(after_final)} items with updates after their final: " \
        f"{after_final[:3]}; {context}"
    assert not wrong_end, f"{len(wrong_end)} items ended other than meant: " \
        f"{wrong_end[:3]}; {context}"
    assert not wrong_result, f"echo results wrong: {wrong_result[:3]}; {context}"
    assert not bad_attempts, f"{len(bad_attempts)} items whose attempts go back, past " \
        f"max_attempts, or do not follow QUEUED, RETRYING N, attempt N + 1: " \
        f"{bad_attempts[:3]}; {context}"
    assert takeovers, f"no item was taken over from a and b: {summary}"
    lost = {n: v["lost_updates"] for n, v in counters.items() if v.get("lost_updates")}
    assert not lost, f"instances that lost updates: {lost}; {context}"

    # ---- the subscribers open through the chaos got the same updates ------------
    for w in watchers:
        end = w.describe_end()
        assert not w.done or w.status_code() == grpc.StatusCode.RESOURCE_EXHAUSTED, \
            f"{w.name}: {end}; {context}"
        w.assert_seq_increasing()
        got = w.snapshot()
        upto = min(got[-1].seq if got else 0, ups[-1].seq)
        mine = [u for u in got if u.seq <= upto]
        theirs = [u for u in ups if u.seq <= upto]
        if mine != theirs:
            seqs = {u.seq for u in mine}
            missing = [brief(u) for u in theirs if u.seq not in seqs]
            other = {u.seq: u for u in theirs}
            differ = [(brief(u), brief(other.get(u.seq)) if u.seq in other else None)
                      for u in mine if other.get(u.seq) != u]
            raise AssertionError(
                f"{w.name} ({end}, {len(got)} updates) and the replay on c disagree up to seq "
                f"{upto}: {len(missing)} updates missing, e.g. {missing[:3]}; {len(differ)} "
                f"different or extra (its, replay's), e.g. {differ[:3]}; {context}")

    # ---- getItems on another survivor agrees with the final -------------------
    gi = survivors[1].client()
    disagree = []
    ids = sorted(submitted)
    for k in range(0, len(ids), 200):
        reply = gi.get_items(ids[k:k + 200], with_results=True)
        assert not reply.not_found, f"getItems does not know {list(reply.not_found)[:5]}; " \
            f"{context}"
        for it in reply.items:
            f = sub.final[it.id]
            got = (state_name(it.state), it.attempt, it.last_seq, it.error,
                   it.result if it.state == SUCCEEDED else b"")
            want = (state_name(f.state), f.attempt, f.seq, f.error,
                    f.result if f.state == SUCCEEDED else b"")
            if got != want:
                disagree.append((it.id, got, want))
    assert not disagree, f"{len(disagree)} items where getItems and the final disagree " \
        f"(getItems, final): {disagree[:3]}; {context}"
    # no delayed item started before its due time (accepted + delay), one
    # clock: every instance runs on this machine
    early = []
    delayed = sorted(i for i in submitted if by_id[i].get("delay_ms"))
    for k in range(0, len(delayed), 200):
        for it in gi.get_items(delayed[k:k + 200]).items:
            due = it.accepted_unix_nano + by_id[it.id]["delay_ms"] * 10**6
            starts = [u.time_unix_nano for u in per_id[it.id] if u.state == conftest.STARTED]
            if starts and min(starts) < due:
                early.append((it.id, by_id[it.id]["delay_ms"], (due - min(starts)) / 1e6))
    assert not early, f"{len(early)} delayed items started early (id, delay, ms early): " \
        f"{early[:5]}; {context}"
    # nothing left waiting in Redis
    left = {k: redis.command(cmd, f"{{{name}}}:{k}") for k, cmd in
            (("pwork", "XLEN"), ("delayed", "ZCARD"), ("prio", "ZCARD"))}
    assert not any(left.values()), f"left in redis: {left}; {context}"

    # ---- nobody crashed --------------------------------------------------------
    for inst in (b, c, d):
        assert inst.proc.poll() is None, f"{inst.name}'s master exited with " \
            f"{inst.proc.returncode}; {context}; log:\n{inst.log_tail()}"
    logs = {n: a_log if n == "a" else inst.log_text() for n, inst in instances.items()}
    crashes = [f"{n}: {m.group(0)}" for n, text in logs.items() for m in CRASH.finditer(text)]
    assert not crashes, f"crash reports in the logs: {crashes[:5]}; {context}"
    deaths = [x for n, text in logs.items() for x in unexpected_deaths(n, text, killed)]
    assert not deaths, f"deaths the test did not cause: {deaths[:5]}; {context}"


# ---- what the chaos found, each on its own ---------------------------------------

@pytest.mark.deadline(60)
def test_a_takeover_past_max_attempts_fails_the_last_attempt(redis, start_daemon):  # noqa: F811
    """An item at its last attempt (max_attempts 1) is held by an instance
    that stops renewing it (SIGKILL). The other one takes it over and ends
    it FAILED: of attempt 1, the one that stopped, as its error says, not
    of an attempt 2 past max_attempts that never ran (the chaos test saw
    'FAILED' at attempt 3 of an item with max_attempts 2); getItems says
    the same."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a", lease=LEASE,
                       overrides={"workers": {"prefetch": 1}})
    sub = a.client().subscribe(sync=True, name="sub-a")
    b = start_instance(start_daemon, redis, name, "b", lease=LEASE)
    item_id = f"last-{name}"
    # whichever instance starts it is killed
    assert b.client().submit([{"id": item_id, "kind": "sleep", "params": {"ms": "20000"},
                               "max_attempts": 1}]).accepted == 1
    started = sub.wait_state(item_id, conftest.STARTED, timeout=10)
    holder, other = (a, b) if started.worker_pid in a.worker_pids() else (b, a)
    assert started.worker_pid in holder.worker_pids(), (started, a.worker_pids(), b.worker_pids())
    kill_everything(holder)
    watcher = sub if other is a else other.client().subscribe(replay=True, item_ids=[item_id],
                                                               name="sub-b")
    final = watcher.wait_final([item_id], timeout=20)[item_id]
    assert final.state == FAILED, watcher.states_of(item_id)
    assert "stopped renewing it" in final.error and final.error.endswith("(attempt 1 of 1)"), \
        final.error
    assert final.attempt == 1, \
        f"FAILED at attempt {final.attempt} of an item with max_attempts 1: {final.error!r}"
    got = other.client().get_items([item_id]).items[0]
    assert (got.state, got.attempt, got.max_attempts, got.last_seq) == \
        (FAILED, 1, 1, final.seq), got
    wait_work_empty(redis, name)


@pytest.mark.deadline(60)
def test_a_delayed_item_held_before_its_batch_is_sent_starts_after_accepted_plus_delay(  # noqa: F811
        redis, start_daemon):
    """Two accept scripts are in flight (Redis paused: CLIENT PAUSE WRITE),
    so the next item waits in its instance before its batch is sent. Its
    due time counts from its arrival; getItems's accepted must be that
    moment too, not the later send (the chaos test saw delayed items
    start up to 5 ms before getItems's accepted + delay_ms)."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a", lease=LEASE)
    sub = a.client().subscribe(sync=True, name="sub-a")
    tag = name
    pause_ms = 800
    redis.command("CLIENT", "PAUSE", str(pause_ms), "WRITE")
    t0 = time.monotonic()
    replies = []

    def send(items):
        replies.append(a.client().submit(items, timeout=20))
    threads = [threading.Thread(target=send, args=([{"id": f"{tag}-hold{n}", "kind": "echo",
                                                     "payload": b"p"}],), daemon=True)
               for n in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.1)        # each in a batch of its own: two scripts in flight
    late = {"id": f"{tag}-late", "kind": "echo", "payload": b"p", "delay_ms": 200}
    send([late])            # waits for a reply to either script, then its own
    for t in threads:
        t.join(timeout=20)
    assert time.monotonic() - t0 >= pause_ms / 1000 - 0.1, "redis was not paused"
    assert [r.accepted for r in replies] == [1, 1, 1], replies
    sub.wait_final([late["id"]], timeout=20)
    started = [u for u in sub.of(late["id"]) if u.state == conftest.STARTED]
    assert started, sub.states_of(late["id"])
    got = a.client().get_items([late["id"]]).items[0]
    due = got.accepted_unix_nano + late["delay_ms"] * 10**6
    assert started[0].time_unix_nano >= due, \
        f"started {(due - started[0].time_unix_nano) / 1e6:.1f} ms before getItems's " \
        f"accepted + delay_ms"


@pytest.mark.deadline(60)
def test_a_reload_to_a_longer_lease_keeps_its_items(redis, start_daemon):  # noqa: F811
    """A rolling change of cluster.lease (docs/scaling.md: it applies at
    once on a reload, "kill -HUP on each instance, any order"): a is
    reloaded first, from 1 s to 6 s; b still has 1 s. Nothing stopped, so
    no item may be taken over ("stopped renewing it") from a while it runs
    it. An instance renews every lease/3 of its own lease; b claimed what
    was idle for b's lease, so what a renews only every 2 s (2-4 of 6 items
    here) ran twice. Each instance now says its lease in
    {NAME}:lease:CONSUMER and claimers wait for the holder's. Then a dies
    holding items: c (lease 1 s, started once a runs them, b gone so that
    they are a's) takes them over after a's 6 s, not its own 1 s."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a", lease="1s")
    b = start_instance(start_daemon, redis, name, "b", lease="1s")
    a.write_config(deep_merge(a.config, {"cluster": {"lease": "6s"}}))
    a.send_signal(signal.SIGHUP)
    a.wait_log("config generation 2 applied")
    # (a says its new lease with its next renewal, up to a third of the old one later)
    conftest.wait_for(lambda: sorted(redis.command("GET", k) for k in redis.command(
        "KEYS", f"{{{name}}}:lease:*")) == [b"1000", b"6000"], 5, "a's lease key saying 6000")
    sub = b.client().subscribe(sync=True, name="sub-b")
    ids = [f"long-{name}-{i}" for i in range(6)]
    assert a.client().submit([{"id": i, "kind": "sleep", "params": {"ms": "3000"}}
                              for i in ids]).accepted == len(ids)
    final = sub.wait_final(ids, timeout=40)
    assert all(u.state == SUCCEEDED for u in final.values()), \
        {i: sub.states_of(i) for i in ids}
    taken = {i: [u.error for u in sub.of(i) if u.state == RETRYING] for i in ids}
    assert not any(taken.values()), taken
    # a dies holding items (b stopped first, so that they are a's: a
    # stopped grpc process's blocked read may still be given some, see
    # below); c takes them over after a's lease, not after its own
    b.stop()
    more = [f"late-{name}-{i}" for i in range(2)]
    sub_a = a.client().subscribe(sync=True, name="sub-a")
    assert a.client().submit([{"id": i, "kind": "sleep", "params": {"ms": "60000"}}
                              for i in more]).accepted == len(more)
    for i in more:
        sub_a.wait_state(i, conftest.STARTED, timeout=20)
    c = start_instance(start_daemon, redis, name, "c", lease="1s")
    sub_c = c.client().subscribe(sync=True, name="sub-c")
    kill_everything(a)
    killed = time.monotonic()
    for i in more:
        sub_c.wait(lambda s, i=i: RETRYING in [u.state for u in s.of(i)], 30,
                   f"{i} taken over from a")
    waited = time.monotonic() - killed
    assert waited > 3.5, f"taken over {waited:.1f} s after a died, within a's 6 s lease " \
        "(renewed every 2 s)"


def retrying(retry_module, backoff, prefetch=None):
    """An instance's overrides: the retry test module as kind r (beside echo
    and sleep), queue.retry_backoff BACKOFF, and workers.prefetch if given."""
    o = {"queue": {"retry_backoff": {"min": backoff, "max": backoff}},
         "handlers": {"default": "echo", "echo": {"builtin": "echo"},
                      "sleep": {"builtin": "sleep"}, "r": {"module": str(retry_module)}}}
    if prefetch is not None:
        o["workers"] = {"prefetch": prefetch}
    return o


def pending_entry(redis, name):
    """(entry id, holder, delivery count) of the one pending work entry."""
    p = redis.command("XPENDING", f"{{{name}}}:work", "dosomethingd", "-", "+", "10")
    assert len(p) == 1, p
    return p[0][0], p[0][1], int(p[0][3])


@pytest.mark.deadline(60)
@pytest.mark.parametrize("max_attempts", [3, 2])
def test_a_copy_taken_over_and_back_runs_on_as_the_attempt_counted(redis,  # noqa: F811
                                                                   start_daemon, max_attempts):
    """b runs an item; another instance takes it over (here "ghost", by
    hand: XCLAIM, delivery count 2), as happens when b was stopped past its
    lease while its blocked read was given the item, and stops renewing it
    in turn. b claims it back (count 3) while its own copy still runs:
    that copy goes on as attempt 3 (RETRYING of ghost's attempt 2, STARTED
    3) and its final counts. Before, b's final was dropped as superseded
    (its copy still said attempt 1) and the item ran once more after the
    lease, as attempt 4, past max_attempts 3: FAILED. With max_attempts 2,
    ghost's attempt was the last: b's copy goes on as it (STARTED 2, its
    final at attempt 2, not 3 past max_attempts)."""
    name = cluster_name()
    b = start_instance(start_daemon, redis, name, "b", lease=LEASE)
    sub = b.client().subscribe(sync=True, name="sub-b")
    item_id = f"back-{name}"
    ms = 6000
    assert b.client().submit([{"id": item_id, "kind": "sleep", "params": {"ms": str(ms)},
                               "max_attempts": max_attempts}]).accepted == 1
    started = sub.wait_state(item_id, conftest.STARTED, timeout=10)
    entry, holder, count = pending_entry(redis, name)
    assert count == 1, (entry, holder, count)
    redis.command("XCLAIM", f"{{{name}}}:work", "dosomethingd", "ghost", "0", entry)
    final = sub.wait_final([item_id], timeout=30)[item_id]
    ups = [(state_name(u.state), u.attempt) for u in sub.of(item_id)]
    if max_attempts == 3:
        assert ups == [("QUEUED", 1), ("STARTED", 1), ("RETRYING", 2), ("STARTED", 3),
                       ("SUCCEEDED", 3)], ups
        retrying = [u for u in sub.of(item_id) if u.state == RETRYING][0]
        assert "instance ghost stopped renewing it" in retrying.error, retrying.error
    else:
        assert ups == [("QUEUED", 1), ("STARTED", 1), ("STARTED", 2), ("SUCCEEDED", 2)], ups
    ran_s = (final.time_unix_nano - started.time_unix_nano) / 1e9
    assert ran_s < 2 * ms / 1000, f"final {ran_s:.1f} s after the first STARTED: it ran twice"
    b.wait_log(r'item "back-.*", which instance ghost stopped renewing, runs on here as '
               rf'attempt {final.attempt} \(the copy we were given')
    wait_work_empty(redis, name)


@pytest.mark.deadline(60)
def test_an_item_renewed_late_by_its_holder_keeps_its_attempt(redis, start_daemon):  # noqa: F811
    """b's own renewal comes late (its entry idle past the lease, set by
    hand: XCLAIM IDLE, as after a stop or a held-up loop): its claim may
    take the entry back from itself before its renewal. Nothing ended, so
    the claim keeps the delivery count and the copy's final counts:
    attempt 1, one STARTED, no RETRYING. Before, the claim counted a
    delivery, the final was dropped as superseded and the item ran again
    after the lease. (Which of b's timers comes first after each hand
    edit is b's own choice: five rounds.)"""
    name = cluster_name()
    b = start_instance(start_daemon, redis, name, "b", lease=LEASE)
    sub = b.client().subscribe(sync=True, name="sub-b")
    item_id = f"late-{name}"
    assert b.client().submit([{"id": item_id, "kind": "sleep",
                               "params": {"ms": "5000"}}]).accepted == 1
    sub.wait_state(item_id, conftest.STARTED, timeout=10)
    entry, holder, _ = pending_entry(redis, name)
    for _ in range(5):
        redis.command("XCLAIM", f"{{{name}}}:work", "dosomethingd", holder, "0", entry,
                      "IDLE", "100000", "JUSTID")
        time.sleep(0.7)
        assert pending_entry(redis, name)[1:] == (holder, 1), pending_entry(redis, name)
    final = sub.wait_final([item_id], timeout=30)[item_id]
    ups = [(state_name(u.state), u.attempt) for u in sub.of(item_id)]
    assert ups == [("QUEUED", 1), ("STARTED", 1), ("SUCCEEDED", 1)], ups
    assert final.state == SUCCEEDED
    wait_work_empty(redis, name)


@pytest.mark.deadline(60)
def test_an_entry_given_to_us_but_lost_counts_a_delivery(redis, start_daemon):  # noqa: F811
    """An entry pending under b's consumer that b does not hold (the reply
    of its read lost with a broken connection; here the test reads it as b,
    while b's one worker is full and b pulls nothing): b's claim of its
    own entries keeps their count for the copies it holds, so for this
    one it counts the delivery itself: RETRYING of attempt 1 naming b,
    then attempt 2 runs, as any takeover."""
    name = cluster_name()
    b = start_instance(start_daemon, redis, name, "b", lease=LEASE, workers=1,
                       overrides={"workers": {"prefetch": 1}})
    sub = b.client().subscribe(sync=True, name="sub-b")
    busy, lost = f"busy-{name}", f"lost-{name}"
    assert b.client().submit([{"id": busy, "kind": "sleep",
                               "params": {"ms": "3000"}}]).accepted == 1
    sub.wait_state(busy, conftest.STARTED, timeout=10)
    assert b.client().submit([{"id": lost, "kind": "sleep",
                               "params": {"ms": "10"}}]).accepted == 1
    holder = pending_entry(redis, name)[1]
    got = redis.command("XREADGROUP", "GROUP", "dosomethingd", holder, "COUNT", "1",
                        "STREAMS", f"{{{name}}}:work", ">")
    assert got and len(got[0][1]) == 1, f"the lost item's entry was not left unread: {got}"
    final = sub.wait_final([busy, lost], timeout=30)
    assert final[busy].state == SUCCEEDED and final[busy].attempt == 1, sub.states_of(busy)
    ups = [(state_name(u.state), u.attempt) for u in sub.of(lost)]
    assert ups == [("QUEUED", 1), ("RETRYING", 1), ("STARTED", 2), ("SUCCEEDED", 2)], ups
    retrying = [u for u in sub.of(lost) if u.state == RETRYING][0]
    assert f"instance {holder.decode()} stopped renewing it" in retrying.error, retrying.error
    wait_work_empty(redis, name)


@pytest.mark.deadline(90)
def test_an_item_that_ended_while_its_instance_was_stopped_is_not_run_again(  # noqa: F811
        redis, start_daemon):
    """b's grpc process is stopped past its lease while its worker finishes
    an item. Woken, it sends the final and claims its own idle entries in
    the same turn: the claim keeps the entry's count, the final lands, and
    the claim's reply must not take the entry as one b lost (its item no
    longer held, its final on its way): before, b ran the item again (its
    updates dropped, the log saying 'took over'), or the final was dropped
    behind set_count and the item ran as attempt 2. Which of b's timers
    comes first is b's own choice: six rounds."""
    name = cluster_name()
    b = start_instance(start_daemon, redis, name, "b", lease=LEASE)
    sub = b.client().subscribe(sync=True, name="sub-b")
    grpc_pid = b.grpc_pid()
    ids = []
    for n in range(6):
        item_id = f"stopped-{name}-{n}"
        ids.append(item_id)
        assert b.client().submit([{"id": item_id, "kind": "sleep",
                                   "params": {"ms": "1100"}}]).accepted == 1
        sub.wait_state(item_id, conftest.STARTED, timeout=10)
        os.kill(grpc_pid, signal.SIGSTOP)
        try:
            time.sleep(2.3)
        finally:
            os.kill(grpc_pid, signal.SIGCONT)
        sub.wait_final([item_id], timeout=20)
        ups = [(state_name(u.state), u.attempt) for u in sub.of(item_id)]
        assert ups == [("QUEUED", 1), ("STARTED", 1), ("SUCCEEDED", 1)], (n, ups)
        wait_work_empty(redis, name)
    time.sleep(LEASE_S * 1.5)      # a second run would be taken and logged by now
    assert "took over" not in b.log_text(), \
        [line for line in b.log_text().splitlines() if "took over" in line]


# ---- a copy taken over and back: cancels, retries, prefetch, max_attempts -----------

def ghost_claim(redis, name, entry):
    """Another instance ("ghost") takes ENTRY over (XCLAIM counts a delivery)
    and then never renews it: the entry comes back to b after the lease."""
    redis.command("XCLAIM", f"{{{name}}}:work", "dosomethingd", "ghost", "0", entry)


def ups_of(sub, item_id):
    return [(state_name(u.state), u.attempt) for u in sub.of(item_id)]


def one_final(sub, item_id, settle=LEASE_S * 2):
    """The item's updates after a quiet while (a second final, or a run
    after the final, would come within a lease or two): exactly one final,
    the last update, attempts never going back."""
    time.sleep(settle)
    ups = ups_of(sub, item_id)
    finals = [u for u in sub.of(item_id) if u.state in FINAL_STATES]
    assert len(finals) == 1, ups
    assert sub.of(item_id)[-1].state in FINAL_STATES, ups
    attempts = [a for _, a in ups]
    assert attempts == sorted(attempts), ups
    return finals[0]


def no_crash(*instances, timed_out=()):
    """No instance exited, no crash line; no worker died but those killed
    for the timeout of an item in TIMED_OUT."""
    for inst in instances:
        assert inst.proc.poll() is None, f"{inst.name} exited: {inst.log_tail()}"
        crashes = [m.group(0) for m in CRASH.finditer(inst.log_text())]
        assert not crashes, crashes[:5]
        deaths = [d for d in unexpected_deaths(inst.name, inst.log_text(), set())
                  if not any(d.endswith(f'item "{i}" timed out') for i in timed_out)]
        assert not deaths, deaths[:5]


def agrees(client, item_id, final):
    got = client.get_items([item_id]).items[0]
    assert (got.state, got.attempt, got.last_seq) == (final.state, final.attempt, final.seq), \
        (got, brief(final))
    return got


@pytest.mark.deadline(60)
def test_a_copy_adopted_back_and_then_cancelled_ends_cancelled_once(redis,  # noqa: F811
                                                                     start_daemon):
    """The ghost trick (test_a_copy_taken_over_and_back_runs_on_as_the_attempt_counted);
    once b's copy runs on as attempt 3, a client cancels it: one final,
    CANCELLED at attempt 3, the copy not run again; getItems says STARTED
    at attempt 3 before the cancel, and agrees with the final after it."""
    name = cluster_name()
    b = start_instance(start_daemon, redis, name, "b", lease=LEASE)
    sub = b.client().subscribe(sync=True, name="sub-b")
    item_id = f"cancel-back-{name}"
    assert b.client().submit([{"id": item_id, "kind": "sleep", "params": {"ms": "20000"},
                               "max_attempts": 3}]).accepted == 1
    sub.wait_state(item_id, conftest.STARTED, timeout=10)
    entry, _, _ = pending_entry(redis, name)
    ghost_claim(redis, name, entry)
    sub.wait_state(item_id, conftest.STARTED, timeout=15, attempt=3)
    got = b.client().get_items([item_id]).items[0]
    assert (got.state, got.attempt) == (conftest.STARTED, 3), got
    reply = b.client().cancel_items([item_id], reason="stop it")
    assert reply.cancelled == 1, reply
    final = sub.wait_final([item_id], timeout=15)[item_id]
    assert (final.state, final.attempt) == (CANCELLED, 3), ups_of(sub, item_id)
    one_final(sub, item_id)
    agrees(b.client(), item_id, final)
    wait_work_empty(redis, name)
    no_crash(b)


@pytest.mark.deadline(60)
def test_a_cancel_asked_of_the_ghost_applies_to_the_copy_claimed_back(redis,  # noqa: F811
                                                                       start_daemon):
    """The cancel comes while ghost holds the entry: it is addressed to
    ghost ({NAME}:control) and kept in the hash (cr). When b claims the
    entry back, its copy (still running) is cancelled: one final,
    CANCELLED, well before the copy's 20 s; getItems agrees."""
    name = cluster_name()
    b = start_instance(start_daemon, redis, name, "b", lease=LEASE)
    sub = b.client().subscribe(sync=True, name="sub-b")
    item_id = f"cancel-ghost-{name}"
    assert b.client().submit([{"id": item_id, "kind": "sleep", "params": {"ms": "20000"},
                               "max_attempts": 3}]).accepted == 1
    started = sub.wait_state(item_id, conftest.STARTED, timeout=10)
    entry, _, _ = pending_entry(redis, name)
    ghost_claim(redis, name, entry)
    reply = b.client().cancel_items([item_id], reason="stop it")
    assert reply.cancelled == 1, reply
    assert redis.command("HGET", f"{{{name}}}:item:{item_id}", "cr") == b"stop it"
    final = sub.wait_final([item_id], timeout=15)[item_id]
    assert final.state == CANCELLED, ups_of(sub, item_id)
    assert "stop it" in final.error, final.error
    assert (final.time_unix_nano - started.time_unix_nano) / 1e9 < 10, ups_of(sub, item_id)
    one_final(sub, item_id)
    agrees(b.client(), item_id, final)
    wait_work_empty(redis, name)
    no_crash(b)


def keep_ghost_renewing(redis, name, entry, seconds):
    """Ghost renews ENTRY (XCLAIM JUSTID: no delivery counted) for SECONDS."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        redis.command("XCLAIM", f"{{{name}}}:work", "dosomethingd", "ghost", "0", entry,
                      "JUSTID")
        time.sleep(0.2)


class GhostRenewing:
    """Ghost renews ENTRY (as keep_ghost_renewing does) every 0.2 s in a
    thread of its own, from the start of the with block to its end."""

    def __init__(self, redis, name, entry):
        self.redis, self.name, self.entry = redis, name, entry
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="ghost", daemon=True)

    def _run(self):
        while not self.stop.is_set():
            self.redis.command("XCLAIM", f"{{{self.name}}}:work", "dosomethingd", "ghost", "0",
                               self.entry, "JUSTID")
            self.stop.wait(0.2)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)


def entries(redis, name):
    """[(entry id, holder, count)] of the pending work entries, oldest first."""
    p = redis.command("XPENDING", f"{{{name}}}:work", "dosomethingd", "-", "+", "10")
    return [(e[0], e[1], int(e[3])) for e in p]


@pytest.mark.deadline(60)
@pytest.mark.parametrize("max_attempts", [3, 2])
def test_a_copy_waiting_its_backoff_taken_over_and_back_runs_once(redis,  # noqa: F811
                                                                   start_daemon, retry_module,
                                                                   max_attempts):
    """A retry-module item's attempt 1 asks for another (retry_backoff 3 s);
    while b's copy waits its backoff, ghost takes the entry and stops
    renewing it (taken as script_claim takes an entry whose retry is not
    due: its delivery count kept); b claims it back, still waiting: the
    copy goes on as attempt 2 and ends once, SUCCEEDED at 2 (a plain
    XCLAIM here counted one more delivery and the copy ran as attempt 3,
    past max_attempts 2: not what a real instance's claim does); getItems
    agrees."""
    name = cluster_name()
    b = start_instance(start_daemon, redis, name, "b", lease=LEASE,
                       overrides=retrying(retry_module, "3000ms"))
    sub = b.client().subscribe(sync=True, name="sub-b")
    item_id = f"backoff-{name}"
    assert b.client().submit([{"id": item_id, "kind": "r", "payload": b"r",
                               "params": {"retry_until": "2"},
                               "max_attempts": max_attempts}]).accepted == 1
    sub.wait_state(item_id, RETRYING, timeout=10)
    entry, holder, count = pending_entry(redis, name)
    assert count == 2, (entry, holder, count)   # the retry counted attempt 2's delivery
    # as script_claim takes an entry whose retry is not due yet: its count kept
    redis.command("XCLAIM", f"{{{name}}}:work", "dosomethingd", "ghost", "0", entry,
                  "RETRYCOUNT", str(count))
    final = sub.wait_final([item_id], timeout=20)[item_id]
    one_final(sub, item_id)
    ups = ups_of(sub, item_id)
    assert final.state == SUCCEEDED, ups
    assert final.attempt == 2, ups
    agrees(b.client(), item_id, final)
    wait_work_empty(redis, name)
    no_crash(b)


def parked_copy(redis, start_daemon, name, prefix, overrides=None):
    """Instance b, running one sleep item at a time (handlers.sleep
    .concurrency 1), busy with one (20 s: the caller cancels it) while the
    item PREFIX-NAME (a short sleep, max_attempts 3) waits here, parked at
    the kind's limit, its entry read by b. Returns b, a subscriber, the
    busy item's id, the item's id and its entry."""
    b = start_instance(start_daemon, redis, name, "b", lease=LEASE, workers=2,
                       overrides=deep_merge({"workers": {"prefetch": 1},
                                             "handlers": {"default": "echo",
                                                          "echo": {"builtin": "echo"},
                                                          "sleep": {"builtin": "sleep",
                                                                    "concurrency": 1}}},
                                            overrides))
    sub = b.client().subscribe(sync=True, name="sub-b")
    busy, item_id = f"busy-{name}", f"{prefix}-{name}"
    assert b.client().submit([{"id": busy, "kind": "sleep",
                               "params": {"ms": "20000"}}]).accepted == 1
    sub.wait_state(busy, conftest.STARTED, timeout=10)
    assert b.client().submit([{"id": item_id, "kind": "sleep", "params": {"ms": "10"},
                               "max_attempts": 3}]).accepted == 1
    conftest.wait_for(lambda: len(entries(redis, name)) == 2, 5, "the item's entry read by b")
    return b, sub, busy, item_id, entries(redis, name)[1][0]


@pytest.mark.deadline(60)
def test_a_copy_waiting_here_waits_the_rest_of_the_backoff_its_holder_announced(  # noqa: F811
        redis, start_daemon):
    """b runs one sleep item at a time (handlers.sleep.concurrency 1) and
    is busy with one (20 s, cancelled once b has dealt with the entry) when
    the item, a short sleep, is read and parked
    at the kind's limit; ghost takes its entry and (as an instance whose
    attempt asked for a retry does) writes when its next attempt is due
    into the item's hash, 5 s ahead, then stops renewing. b claims the
    entry back as waiting (its count kept), as attempt 2, whether its copy
    was forgotten meanwhile (b's renewal found the entry ghost's) or is
    adopted (the claim came first; tests/unit/test_queue.c test_retime
    has the re-timing itself): it must wait until then, not start when the
    busy item ends (before, an adopted copy did: the rest of the backoff
    was skipped). One final, SUCCEEDED at 2, started after the due time."""
    name = cluster_name()
    # The busy item holds the kind's one slot until cancelled below, after
    # the copy was forgotten or adopted, however long that took (had it
    # ended first, the parked copy would have started at once, as attempt 1).
    b, sub, busy, item_id, entry = parked_copy(redis, start_daemon, name, "due")
    ghost_claim(redis, name, entry)
    due_ms = int(time.time() * 1000) + 5000
    redis.command("HSET", f"{{{name}}}:item:{item_id}", "rd", str(due_ms))
    # b's renewal, finding the entry ghost's, forgets its copy (and its
    # claim then takes the entry afresh) unless the claim comes first
    # (b held up between the two): then the copy is adopted.
    b.wait_log(r'item "due-.*", which (instance ghost stopped renewing, runs on here as '
               r'attempt 2|another instance took over while it waited here, is left to it)',
               timeout=10)
    assert b.client().cancel_items([busy], reason="done").cancelled == 1
    final = sub.wait_final([busy, item_id], timeout=20)
    one_final(sub, item_id)
    ups = ups_of(sub, item_id)
    assert (final[item_id].state, final[item_id].attempt) == (SUCCEEDED, 2), ups
    started = [u for u in sub.of(item_id) if u.state == conftest.STARTED]
    assert started, ups
    early_ms = (due_ms * 1_000_000 - started[0].time_unix_nano) / 1e6
    assert early_ms <= 0, f"started {early_ms:.0f} ms before its due time"
    agrees(b.client(), item_id, final[item_id])
    wait_work_empty(redis, name)
    no_crash(b)


@pytest.mark.deadline(60)
def test_a_copy_waiting_here_taken_over_is_left_to_its_new_holder(  # noqa: F811
        redis, start_daemon):
    """b runs one sleep item at a time (handlers.sleep.concurrency 1) and
    is busy with one (20 s, cancelled once b has forgotten the copy) while
    the item waits here, parked at the kind's limit, when ghost takes its
    entry over and keeps renewing it (until two leases after the busy item
    ended). b's next renewal finds the entry no longer its own and forgets
    its copy: when the busy item ends, nothing runs it for nothing (before,
    it ran and its updates were dropped as superseded). Once ghost stops,
    b takes the entry over as any: RETRYING naming ghost, then SUCCEEDED
    at attempt 3; one final; getItems agrees."""
    name, status = cluster_name(), f"127.0.0.1:{free_port()}"
    # The busy item holds the kind's one slot until cancelled below, once
    # the copy is forgotten, however long that took.
    b, sub, busy, item_id, entry = parked_copy(redis, start_daemon, name, "left",
                                               {"status": {"listen": status}})
    ghost_claim(redis, name, entry)
    # ghost renews all along: an entry idle a lease could be claimed back
    # by b (its copy adopted) before the line comes.
    with GhostRenewing(redis, name, entry):
        b.wait_log(r'item "left-.*", which another instance took over while it waited here, '
                   r'is left to it', timeout=10)
        assert b.client().cancel_items([busy], reason="done").cancelled == 1
        sub.wait_final([busy], timeout=10)
        # A copy still here would run now, while ghost holds the entry.
        time.sleep(LEASE_S * 2)
        assert cluster_status(status)["superseded"] == 0, cluster_status(status)
    final = sub.wait_final([item_id], timeout=20)[item_id]
    one_final(sub, item_id)
    ups = ups_of(sub, item_id)
    assert (final.state, final.attempt) == (SUCCEEDED, 3), ups
    assert [a for s, a in ups if s == "RETRYING"] == [2], ups
    assert cluster_status(status)["superseded"] == 0, cluster_status(status)
    agrees(b.client(), item_id, final)
    wait_work_empty(redis, name)
    no_crash(b)


@pytest.mark.deadline(60)
@pytest.mark.parametrize("kind", ["r", "echo"])
@pytest.mark.parametrize("ghost_holds", [4.0, 0.0])
def test_a_prefetched_copy_taken_over_and_back_ends_once(  # noqa: F811
        redis, start_daemon, retry_module, kind, ghost_holds):
    """b's one worker is busy and has the item prefetched (workers.prefetch
    4) when ghost takes its entry. ghost_holds 4: ghost keeps renewing it
    for 4 s, the busy item (1.5 s) ends meanwhile, and the copy runs and
    ends (asks for a retry: kind r, backoff 200 ms; or succeeds) while
    ghost holds the entry; then ghost stops and b claims it back.
    ghost_holds 0: ghost stops at once and b claims the entry back while
    its copy still waits at the worker, not started (the busy item runs
    6 s). Exactly one final, SUCCEEDED, at most at max_attempts; nothing
    left; getItems agrees."""
    name = cluster_name()
    b = start_instance(start_daemon, redis, name, "b", lease=LEASE, workers=1,
                       overrides=retrying(retry_module, "200ms", prefetch=4))
    sub = b.client().subscribe(sync=True, name="sub-b")
    busy, item_id = f"busy-{name}", f"pf-{kind}-{name}"
    busy_ms = 1500 if ghost_holds else 6000
    assert b.client().submit([{"id": busy, "kind": "sleep",
                               "params": {"ms": str(busy_ms)}}]).accepted == 1
    sub.wait_state(busy, conftest.STARTED, timeout=10)
    item = {"id": item_id, "kind": kind, "max_attempts": 5}
    if kind == "r":
        item.update(payload=b"r", params={"retry_until": "2"})
    elif kind == "sleep":
        item.update(params={"ms": "10"})
    else:
        item.update(payload=b"hello")
    assert b.client().submit([item]).accepted == 1
    conftest.wait_for(lambda: len(entries(redis, name)) == 2, 5, "the item's entry read by b")
    entry = entries(redis, name)[1][0]
    sub.wait_state(item_id, QUEUED)     # it comes back through Redis: maybe after the entry
    assert sub.states_of(item_id) == ["QUEUED"], sub.states_of(item_id)
    ghost_claim(redis, name, entry)
    keep_ghost_renewing(redis, name, entry, ghost_holds)
    if not ghost_holds:
        b.wait_log(r'item "pf-.*", which instance ghost stopped renewing, runs on here as '
                   r'attempt 3', timeout=10)
        assert conftest.STARTED not in [u.state for u in sub.of(item_id)], \
            ups_of(sub, item_id)
    final = sub.wait_final([busy, item_id], timeout=20)
    one_final(sub, item_id)
    ups = ups_of(sub, item_id)
    assert final[busy].state == SUCCEEDED and final[busy].attempt == 1, sub.states_of(busy)
    assert final[item_id].state == SUCCEEDED, ups
    assert final[item_id].attempt <= 5, ups
    agrees(b.client(), item_id, final[item_id])
    wait_work_empty(redis, name)
    no_crash(b)


@pytest.mark.deadline(60)
def test_a_copy_at_max_attempts_1_taken_over_and_back_ends_at_attempt_1(redis,  # noqa: F811
                                                                        start_daemon):
    """max_attempts 1, the ghost trick: ghost's takeover (count 2) is
    past max (a real instance would end it FAILED at attempt 1, here it
    stops before that final lands), and b's claim back counts 3. b's copy
    must go on as the last attempt, 1, and its SUCCEEDED count: one final,
    at attempt 1, never an attempt 2 of max_attempts 1 (it went on as
    deliveries - 1, SUCCEEDED at 2; claimed_attempt() now sets the count
    back to max_attempts + 1)."""
    name = cluster_name()
    b = start_instance(start_daemon, redis, name, "b", lease=LEASE)
    sub = b.client().subscribe(sync=True, name="sub-b")
    item_id = f"max1-{name}"
    ms = 5000
    assert b.client().submit([{"id": item_id, "kind": "sleep", "params": {"ms": str(ms)},
                               "max_attempts": 1}]).accepted == 1
    started = sub.wait_state(item_id, conftest.STARTED, timeout=10)
    entry, _, _ = pending_entry(redis, name)
    ghost_claim(redis, name, entry)
    final = sub.wait_final([item_id], timeout=30)[item_id]
    one_final(sub, item_id)
    ups = ups_of(sub, item_id)
    assert (final.time_unix_nano - started.time_unix_nano) / 1e9 < 2 * ms / 1000, ups
    got = agrees(b.client(), item_id, final)
    assert got.max_attempts == 1, got
    wait_work_empty(redis, name)
    no_crash(b)
    assert (final.state, final.attempt) == (SUCCEEDED, 1), ups
    assert all(a == 1 for _, a in ups), ups


@pytest.mark.deadline(60)
def test_a_prefetched_copy_adopted_before_it_starts_runs_as_the_attempt_counted(  # noqa: F811
        redis, start_daemon, retry_module):
    """b's one worker is busy (4 s) with the retry-module item prefetched
    (workers.prefetch 4, retry_until 2, max_attempts 3) when ghost takes
    its entry and stops renewing it at once: b claims it back while its
    copy waits at the worker, not started, and adopts it as attempt 3
    (RETRYING 2 naming ghost). The handler must be told attempt 3 as the
    updates say: it then succeeds (retry_until 2), SUCCEEDED at 3 with
    'attempt=3' in its result. The worker was given attempt 1 at the
    prefetch and is told 3 (IPC_REATTEMPT); before, its handler asked for
    another attempt ("busy at attempt 1"), and the item, at its last
    attempt, ended FAILED."""
    name = cluster_name()
    b = start_instance(start_daemon, redis, name, "b", lease=LEASE, workers=1,
                       overrides=retrying(retry_module, "200ms", prefetch=4))
    sub = b.client().subscribe(sync=True, name="sub-b")
    busy, item_id = f"busy-{name}", f"pfr-{name}"
    assert b.client().submit([{"id": busy, "kind": "sleep",
                               "params": {"ms": "4000"}}]).accepted == 1
    sub.wait_state(busy, conftest.STARTED, timeout=10)
    assert b.client().submit([{"id": item_id, "kind": "r", "payload": b"r",
                               "params": {"retry_until": "2"},
                               "max_attempts": 3}]).accepted == 1
    conftest.wait_for(lambda: len(entries(redis, name)) == 2, 5, "the item's entry read by b")
    ghost_claim(redis, name, entries(redis, name)[1][0])
    b.wait_log(r'item "pfr-.*", which instance ghost stopped renewing, runs on here as '
               r'attempt 3', timeout=10)
    assert conftest.STARTED not in [u.state for u in sub.of(item_id)], ups_of(sub, item_id)
    final = sub.wait_final([busy, item_id], timeout=20)
    one_final(sub, item_id)
    ups = ups_of(sub, item_id)
    agrees(b.client(), item_id, final[item_id])
    wait_work_empty(redis, name)
    no_crash(b)
    assert (final[item_id].state, final[item_id].attempt) == (SUCCEEDED, 3), \
        (ups, final[item_id].error)
    assert b"attempt=3" in final[item_id].result, final[item_id].result


@pytest.mark.deadline(60)
@pytest.mark.parametrize("copy", ["waiting", "ended"])
def test_a_cancel_asked_of_the_ghost_ends_the_item_once(redis, start_daemon,  # noqa: F811
                                                       retry_module, copy):
    """A cancel asked while ghost holds the entry, when b's copy is not
    running: waiting its retry's backoff (3 s; ghost took the entry as
    script_claim takes one not due: its count kept), or already ended
    while ghost held the entry (kept renewed 2.5 s: its SUCCEEDED dropped
    as superseded). b claims the entry back with the hash's cr: one
    final, CANCELLED with the reason, nothing run after it; getItems
    agrees."""
    name = cluster_name()
    b = start_instance(start_daemon, redis, name, "b", lease=LEASE,
                       overrides=retrying(retry_module, "3000ms"))
    sub = b.client().subscribe(sync=True, name="sub-b")
    item_id = f"cancel-{copy}-{name}"
    if copy == "waiting":
        assert b.client().submit([{"id": item_id, "kind": "r", "payload": b"r",
                                   "params": {"retry_until": "2"},
                                   "max_attempts": 3}]).accepted == 1
        sub.wait_state(item_id, RETRYING, timeout=10)
        entry, _, count = pending_entry(redis, name)
        redis.command("XCLAIM", f"{{{name}}}:work", "dosomethingd", "ghost", "0", entry,
                      "RETRYCOUNT", str(count))
    else:
        assert b.client().submit([{"id": item_id, "kind": "sleep", "params": {"ms": "1000"},
                                   "max_attempts": 3}]).accepted == 1
        sub.wait_state(item_id, conftest.STARTED, timeout=10)
        entry, _, _ = pending_entry(redis, name)
        ghost_claim(redis, name, entry)
        keep_ghost_renewing(redis, name, entry, 2.5)
        assert not [u for u in sub.of(item_id) if u.state in FINAL_STATES], \
            ups_of(sub, item_id)
    reply = b.client().cancel_items([item_id], reason="stop it")
    assert reply.cancelled == 1, reply
    final = sub.wait_final([item_id], timeout=15)[item_id]
    one_final(sub, item_id, settle=LEASE_S * 3)
    ups = ups_of(sub, item_id)
    assert final.state == CANCELLED and "stop it" in final.error, (ups, final.error)
    assert conftest.STARTED not in [state for state, a in ups if a > 1], ups
    agrees(b.client(), item_id, final)
    wait_work_empty(redis, name)
    no_crash(b)


@pytest.mark.deadline(90)
def test_many_copies_taken_over_and_back_at_once_each_end_once(redis,  # noqa: F811
                                                               start_daemon):
    """Twelve items on b (2 workers, prefetch 4: some run, some wait at a
    worker, some in b's queue); ghost takes every pending entry at once
    and stops renewing them; b claims them back together. Every item ends
    once, SUCCEEDED, at an attempt no greater than max_attempts 3; getItems
    agrees; nothing left."""
    name = cluster_name()
    b = start_instance(start_daemon, redis, name, "b", lease=LEASE,
                       overrides={"workers": {"prefetch": 4}})
    sub = b.client().subscribe(sync=True, name="sub-b")
    ids = [f"many-{name}-{i}" for i in range(12)]
    assert b.client().submit([{"id": i, "kind": "sleep", "params": {"ms": "1500"},
                               "max_attempts": 3} for i in ids]).accepted == len(ids)
    sub.wait_state(ids[0], conftest.STARTED, timeout=10)
    pending = entries(redis, name)
    assert pending, pending
    for entry, _, _ in pending:
        ghost_claim(redis, name, entry)
    final = sub.wait_final(ids, timeout=40)
    time.sleep(LEASE_S * 2)
    bad = {}
    for i in ids:
        ups = ups_of(sub, i)
        finals = [u for u in sub.of(i) if u.state in FINAL_STATES]
        if len(finals) != 1 or sub.of(i)[-1].state not in FINAL_STATES or \
                final[i].state != SUCCEEDED or final[i].attempt > 3:
            bad[i] = ups
    assert not bad, bad
    got = {it.id: it for it in b.client().get_items(ids).items}
    assert all((got[i].state, got[i].attempt) == (final[i].state, final[i].attempt)
               for i in ids), {i: (got[i].state, got[i].attempt, brief(final[i])) for i in ids}
    wait_work_empty(redis, name)
    no_crash(b)


@pytest.mark.deadline(60)
def test_a_cancel_asked_of_the_ghost_cancels_a_prefetched_copy(redis,  # noqa: F811
                                                               start_daemon):
    """b's one worker is busy (4 s) with the item prefetched (prefetch 4)
    when ghost takes the item's entry and a client cancels it (asked of
    ghost: control + cr). b claims it back before its copy starts: the
    copy is cancelled at the worker, never started; one final, CANCELLED;
    the busy item is not disturbed; getItems agrees."""
    name = cluster_name()
    b = start_instance(start_daemon, redis, name, "b", lease=LEASE, workers=1,
                       overrides={"workers": {"prefetch": 4}})
    sub = b.client().subscribe(sync=True, name="sub-b")
    busy, item_id = f"busy-{name}", f"pfc-{name}"
    assert b.client().submit([{"id": busy, "kind": "sleep",
                               "params": {"ms": "4000"}}]).accepted == 1
    sub.wait_state(busy, conftest.STARTED, timeout=10)
    assert b.client().submit([{"id": item_id, "kind": "sleep", "params": {"ms": "10"},
                               "max_attempts": 3}]).accepted == 1
    conftest.wait_for(lambda: len(entries(redis, name)) == 2, 5, "the item's entry read by b")
    ghost_claim(redis, name, entries(redis, name)[1][0])
    reply = b.client().cancel_items([item_id], reason="stop it")
    assert reply.cancelled == 1, reply
    final = sub.wait_final([busy, item_id], timeout=20)
    one_final(sub, item_id)
    ups = ups_of(sub, item_id)
    assert final[item_id].state == CANCELLED and "stop it" in final[item_id].error, ups
    assert conftest.STARTED not in [u.state for u in sub.of(item_id)], ups
    assert (final[busy].state, final[busy].attempt) == (SUCCEEDED, 1), sub.states_of(busy)
    agrees(b.client(), item_id, final[item_id])
    wait_work_empty(redis, name)
    no_crash(b)


@pytest.mark.deadline(60)
@pytest.mark.parametrize("max_attempts", [3, 4])
def test_a_copy_adopted_then_timed_out_ends_once(redis, start_daemon,  # noqa: F811
                                                 max_attempts):
    """The ghost trick on an item whose timeout (2 s) ends its run (3 s):
    the copy, adopted as attempt 3, times out. At max_attempts 3 that was
    the last: FAILED at 3; at 4, attempt 4 runs and times out too: FAILED
    at 4. One final either way, nothing run past max_attempts; getItems
    agrees."""
    name = cluster_name()
    b = start_instance(start_daemon, redis, name, "b", lease=LEASE,
                       overrides={"queue": {"retry_backoff": {"min": "50ms", "max": "50ms"}}})
    sub = b.client().subscribe(sync=True, name="sub-b")
    item_id = f"timeout-{name}"
    assert b.client().submit([{"id": item_id, "kind": "sleep", "params": {"ms": "3000"},
                               "timeout_ms": 2000,
                               "max_attempts": max_attempts}]).accepted == 1
    sub.wait_state(item_id, conftest.STARTED, timeout=10)
    entry, _, _ = pending_entry(redis, name)
    ghost_claim(redis, name, entry)
    final = sub.wait_final([item_id], timeout=30)[item_id]
    one_final(sub, item_id)
    ups = ups_of(sub, item_id)
    assert (final.state, final.attempt) == (FAILED, max_attempts), (ups, final.error)
    assert max(a for _, a in ups) <= max_attempts, ups
    agrees(b.client(), item_id, final)
    wait_work_empty(redis, name)
    no_crash(b, timed_out=[item_id])
