"""
Chaos: continuous load, with queue.journal on, while workers and the grpc
process are SIGKILLed and the config reloaded at random; afterwards every
accepted item has exactly one final update.

The random choices are seeded: the seed is printed, and DS_CHAOS_SEED=N
replays the same sequence of actions (the timing of the daemon is its own).
DS_CHAOS_SECONDS changes how long the chaos lasts (default 25).

The grpc process: the master respawns it and the new one takes over the
journal of the dead one (docs/journal.md): what was accepted and not final
is published RETRYING ("recovered from the journal ...") and runs again.
What that cannot give:
- a doSomething call in flight when the process dies ends UNAVAILABLE:
  its items may or may not have been accepted ("uncertain": at most one
  final each; the submitter resubmits them under new ids);
- an update published by the killed process and not yet delivered is lost
  with it (the update log is not journaled). Its item is final in the
  journal, so nobody runs it again: its final update is simply never seen.
  Such an item is tolerated (counted as "final lost with a killed grpc
  process") only if the last update the subscriber saw of it came on a
  stream that a grpc kill ended; one silent on the live stream is a bug.
"""
import collections
import hashlib
import os
import random
import re
import signal
import threading
import time

import grpc
import pytest

from conftest import (FAILED, FINAL_STATES, RETRYING, SUCCEEDED, all_pids, is_dosomethingd,
                      pb, pid_alive, proc_cwd, proc_stat, state_name, wait_for)

CHAOS_SECONDS = float(os.environ.get("DS_CHAOS_SECONDS", "25"))
DRAIN_TIMEOUT = 15          # seconds for the last items to finish after the chaos
GRPC_KILL_P = 0.12          # share of the actions that kill the grpc process
GRPC_KILL_GAP = 3.0         # seconds at least between two, and before the end
                            # (each one costs every live item an attempt)
RECOVERED = "recovered from the journal after a restart"
BATCH = 30                  # items per doSomething call
MAX_OUTSTANDING = 240       # accepted but not final: the submitter waits above this
MAX_ATTEMPTS = 5

OVERRIDES = {
    "workers": {"count": 2},
    "queue": {"max_attempts": MAX_ATTEMPTS},
    # Killing the same slot again and again is the point: no crash-loop give-up.
    "respawn": {"backoff_min": "20ms", "backoff_max": "200ms", "stable_after": "1s",
                "crash_limit": 1000},
}


def sha256_rounds(data, rounds):
    d = hashlib.sha256(data).digest()
    for _ in range(rounds - 1):
        d = hashlib.sha256(d).digest()
    return d


SANITIZER_REPORT = re.compile(r".*(AddressSanitizer|LeakSanitizer|runtime error:).*")
# The master's line for a child's death (src/master/master.c, process_exited).
DEATH = re.compile(r"(?P<role>worker|grpc process)(?: \d+)? \(pid (?P<pid>\d+)\) "
                   r"(?:killed by signal (?P<signal>\d+)|exited with status (?P<status>\d+)).*")


class ResumingSubscriber:
    """getUpdates with replay from seq 0, read by a thread; when the stream
    ends with an error it comes back with replay: true, after_seq: the last
    seq it got, so it sees every update exactly once."""

    def __init__(self, client):
        self.client = client
        self.lock = threading.Lock()
        self.last_seq = 0
        self.count = 0
        self.finals = {}            # item_id -> [final Update]
        self.after_final = []       # (item_id, state) of updates that came after a final
        self.retrying = 0
        self.retry_reasons = {}
        self.seq_violations = []
        self.errors = []            # status codes that ended a stream
        self.resumes = 0
        self.epoch = 0              # streams opened so far - 1
        self.broken = set()         # epochs whose stream ended UNAVAILABLE
        self.last_epoch = {}        # item_id -> epoch of the last update seen of it
        self.recovered = 0          # RETRYING updates of items taken over from the journal
        self.stopping = False
        self.call = None
        self.thread = threading.Thread(target=self._run, name="chaos-sub", daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping:
            req = pb.UpdatesRequest(replay=True, after_seq=self.last_seq)
            self.call = self.client.stub.getUpdates(req)
            try:
                for u in self.call:
                    self._take(u)
                if self.stopping:
                    return
                self.errors.append("ended without status")
            except grpc.RpcError as e:
                if self.stopping:
                    return
                self.errors.append(e.code())
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    with self.lock:
                        self.broken.add(self.epoch)
            with self.lock:
                self.epoch += 1
            self.resumes += 1
            time.sleep(0.05)

    def _take(self, u):
        with self.lock:
            if u.seq <= self.last_seq:
                self.seq_violations.append((self.last_seq, u.seq))
            self.last_seq = u.seq
            self.count += 1
            self.last_epoch[u.item_id] = self.epoch
            if u.item_id in self.finals:
                self.after_final.append((u.item_id, state_name(u.state), u.seq))
            if u.state in FINAL_STATES:
                self.finals.setdefault(u.item_id, []).append(u)
            elif u.state == RETRYING:
                self.retrying += 1
                if RECOVERED in u.error:
                    self.recovered += 1
                key = re.sub(r"\d+", "N", u.error)
                self.retry_reasons[key] = self.retry_reasons.get(key, 0) + 1

    def final_count(self):
        with self.lock:
            return len(self.finals)

    def has_final(self, ids):
        with self.lock:
            return all(i in self.finals for i in ids)

    def silenced(self, item_id, accept_epoch):
        """No final, and the last update seen of it (none seen: the stream
        open when it was accepted) came on a stream that ended UNAVAILABLE:
        its final may have died with a killed grpc process's update log.
        (Call with the lock held.)"""
        return item_id not in self.finals and \
            self.last_epoch.get(item_id, accept_epoch.get(item_id, -1)) in self.broken

    def settled(self, ids, accept_epoch):
        """Every one final, or silenced by a grpc kill."""
        with self.lock:
            return all(i in self.finals or self.silenced(i, accept_epoch) for i in ids)

    def stop(self):
        self.stopping = True
        if self.call is not None:
            self.call.cancel()
        self.thread.join(timeout=5)


class Submitter:
    """Submits batches of mixed items until stopped. A call that fails with
    UNAVAILABLE is retried with fresh ids: its items may or may not have been
    accepted, so they are 'uncertain' (at most one final each)."""

    def __init__(self, client, sub, rng):
        self.client = client
        self.sub = sub
        self.rng = rng              # its own Random: the chaos thread has another
        self.accepted = []          # ids
        self.accept_epoch = {}      # id -> the subscriber's stream when its call was answered
        self.uncertain = []
        self.kinds = {}             # id -> kind
        self.expected = {}          # id -> the result a success must carry
        self.rejections = []
        self.failures = []          # (code, details) of calls that failed
        self.unavailable = 0
        self.calls = 0
        self.stopping = threading.Event()
        self.error = None
        self.n = 0
        self.thread = threading.Thread(target=self._run, name="chaos-load", daemon=True)
        self.thread.start()

    def _item(self):
        self.n += 1
        item_id = f"x{self.n}"
        r = self.rng.random()
        payload = b"chaos-%d" % self.n
        if r < 1 / 3:
            item = {"id": item_id, "kind": "echo", "payload": payload}
            result = payload
        elif r < 2 / 3:
            item = {"id": item_id, "kind": "sha256", "payload": payload,
                    "params": {"rounds": "100"}}
            result = sha256_rounds(payload, 100)
        else:
            item = {"id": item_id, "kind": "sleep",
                    "params": {"ms": str(self.rng.randint(5, 50))}}
            result = b""
        self.kinds[item_id] = item["kind"]
        self.expected[item_id] = result
        return item

    def _run(self):
        try:
            while not self.stopping.is_set():
                # Keep the queue short, so the drain at the end is quick.
                deadline = time.monotonic() + 10
                while (len(self.accepted) - self.sub.final_count() > MAX_OUTSTANDING
                       and not self.stopping.is_set() and time.monotonic() < deadline):
                    time.sleep(0.01)
                self._submit([self._item() for _ in range(BATCH)])
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def _submit(self, items):
        for attempt in range(50):
            self.calls += 1
            try:
                reply = self.client.submit(items, timeout=15)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    self.failures.append((e.code(), e.details()))
                    self.uncertain.extend(i["id"] for i in items)
                    return
                self.unavailable += 1
                self.uncertain.extend(i["id"] for i in items)
                renamed = [dict(i, id=f"{i['id']}r{attempt + 1}") for i in items]
                for old, new in zip(items, renamed):
                    self.kinds[new["id"]] = new["kind"]
                    self.expected[new["id"]] = self.expected[old["id"]]
                items = renamed
                time.sleep(0.1)
                continue
            rejected = {r.index for r in reply.rejections}
            self.rejections.extend((r.id, r.reason) for r in reply.rejections)
            ok = [i["id"] for n, i in enumerate(items) if n not in rejected]
            epoch = self.sub.epoch
            for i in ok:
                self.accept_epoch[i] = epoch
            self.accepted.extend(ok)
            return
        self.failures.append(("UNAVAILABLE 50 times in a row", ""))

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=20)


def daemon_processes(d):
    """Live dosomethingd processes of this daemon: every pid it ever showed,
    the master's descendants, and anything whose cwd is its directory."""
    here = str(d.dir.resolve())
    found = set()
    children = {}
    for pid in all_pids():
        st = proc_stat(pid)
        if st is not None:
            children.setdefault(st[1], []).append(pid)
    pending = [d.master_pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.add(child)
            pending.append(child)
    found |= set(d.known_pids)
    found |= {pid for pid in all_pids() if proc_cwd(pid) == here}
    found.add(d.master_pid)
    return sorted(p for p in found if p != os.getpid() and pid_alive(p) and is_dosomethingd(p))


@pytest.mark.deadline(75)
def test_chaos_kills_and_reloads_under_load(start_daemon, tmp_path, capsys):
    seed = int(os.environ.get("DS_CHAOS_SEED") or random.SystemRandom().randrange(1 << 32))
    rng = random.Random(seed)
    with capsys.disabled():
        print(f"\n[chaos] seed {seed} (DS_CHAOS_SEED={seed} replays the actions)")
    print(f"chaos seed {seed}")

    overrides = {k: dict(v) for k, v in OVERRIDES.items()}
    journal = tmp_path / "journal"
    overrides["queue"]["journal"] = str(journal)
    d = start_daemon(overrides)
    client = d.client()
    sub = ResumingSubscriber(client)
    load = Submitter(client, sub, random.Random(rng.random()))

    kills = reloads = grpc_kills = 0
    grpc_misses = 0
    last_grpc_kill = -GRPC_KILL_GAP
    killed = set()              # pids we SIGKILLed
    kill_misses = 0
    max_workers = 0             # worker processes alive at once, sampled
    count = 2
    actions = []
    t0 = time.monotonic()
    end = t0 + CHAOS_SECONDS
    try:
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.2, 1.2))
            if load.error is not None or (d.proc.poll() is not None):
                break
            pids = sorted(d.worker_pids())      # also records them in d.known_pids
            max_workers = max(max_workers, len(pids))
            r = rng.random()
            now = time.monotonic()
            # At least one grpc kill per run: one is due half-way if none came.
            if r < GRPC_KILL_P or (grpc_kills == 0 and now - t0 > CHAOS_SECONDS / 2):
                if now - t0 - last_grpc_kill < GRPC_KILL_GAP or end - now < GRPC_KILL_GAP:
                    continue
                pid = d.grpc_pid()
                if pid is None:                 # still being respawned
                    grpc_misses += 1
                    continue
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                    grpc_kills += 1
                    last_grpc_kill = now - t0
                    actions.append(f"{now - t0:.1f}s kill grpc {pid}")
                except ProcessLookupError:
                    grpc_misses += 1
            elif r < GRPC_KILL_P + (1 - GRPC_KILL_P) * 0.65:
                if not pids:
                    kill_misses += 1
                    continue
                pid = rng.choice(pids)
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                    kills += 1
                    actions.append(f"{time.monotonic() - t0:.1f}s kill {pid}")
                except ProcessLookupError:
                    kill_misses += 1
            else:
                count = 3 if count == 2 else 2
                overrides["workers"]["count"] = count
                d.write_config(overrides)
                d.send_signal(signal.SIGHUP)
                reloads += 1
                actions.append(f"{time.monotonic() - t0:.1f}s reload workers={count}")
    finally:
        load.stop()

    context = (f"seed {seed}; actions: {actions[-12:]}")
    assert load.error is None, f"submitter failed: {load.error!r}; {context}"
    assert d.proc.poll() is None, \
        f"master exited with {d.proc.returncode} during the chaos; {context}; log:\n{d.log_tail()}"

    # Every accepted item ends, in bounded time (or was silenced by a grpc
    # kill: see the docstring; the last kill is GRPC_KILL_GAP s old, long
    # enough for the new process to have published what it recovered).
    accepted = list(load.accepted)
    accept_epoch = dict(load.accept_epoch)
    try:
        wait_for(lambda: sub.settled(accepted, accept_epoch), DRAIN_TIMEOUT,
                 f"final updates of {len(accepted)} accepted items")
    except AssertionError as e:
        with sub.lock:
            missing = [i for i in accepted
                       if i not in sub.finals and not sub.silenced(i, accept_epoch)]
        raise AssertionError(f"{e}: {len(missing)} missing, e.g. {missing[:5]}; subscriber "
                             f"errors {sub.errors[-5:]}; {context}; log:\n{d.log_tail()}") \
            from None
    # Let any duplicate final show up before looking.
    wait_for(lambda: d.grpc_pid() is not None, 5, "the grpc process")
    time.sleep(0.5)
    sub.stop()
    with sub.lock:
        silenced = [i for i in accepted if sub.silenced(i, accept_epoch)]

    with sub.lock:
        finals = {k: list(v) for k, v in sub.finals.items()}
    submitted = set(load.kinds)
    dup = {i: [state_name(u.state) for u in v] for i, v in finals.items() if len(v) > 1}
    unknown = sorted(set(finals) - submitted)
    failed = {i: v[-1].error for i, v in finals.items() if v[-1].state == FAILED}
    failed_silently = {i: e for i, e in failed.items() if not e.strip()}
    succeeded = sum(1 for v in finals.values() if v[-1].state == SUCCEEDED)
    wrong = {i: (load.kinds.get(i), v[-1].result[:40]) for i, v in finals.items()
             if v[-1].state == SUCCEEDED and i in load.expected
             and v[-1].result != load.expected[i]}
    uncertain_final = sum(1 for i in load.uncertain if i in finals)

    summary = (f"[chaos] seed {seed}: {CHAOS_SECONDS:.0f} s, items submitted {len(submitted)}, "
               f"accepted {len(accepted)}, uncertain {len(load.uncertain)} "
               f"({uncertain_final} ran), succeeded {succeeded}, failed {len(failed)}; "
               f"calls {load.calls}, UNAVAILABLE retried {load.unavailable}; "
               f"updates {sub.count}, RETRYING seen {sub.retrying} {sub.retry_reasons}, "
               f"subscriber resumes {sub.resumes} {dict(collections.Counter(map(str, sub.errors)))}; "
               f"kills {kills} (missed {kill_misses}), grpc process kills {grpc_kills} "
               f"(missed {grpc_misses}), recovered from the journal {sub.recovered}, "
               f"final lost with a killed grpc process {len(silenced)}, reloads {reloads}, "
               f"most worker processes at once {max_workers}")
    print(summary)
    with capsys.disabled():
        print(summary)

    assert not load.failures, f"calls failed other than with UNAVAILABLE: {load.failures[:5]}; {context}"
    assert not load.rejections, f"items rejected: {load.rejections[:5]}; {context}"
    assert not dup, f"{len(dup)} items with more than one final update: {list(dup.items())[:5]}; {context}"
    assert not wrong, \
        f"{len(wrong)} items succeeded with a wrong result: {list(wrong.items())[:5]}; {context}"
    assert not unknown, f"final updates for items never submitted: {unknown[:5]}; {context}"
    assert not sub.after_final, \
        f"updates after an item's final update: {sub.after_final[:5]}; {context}"
    assert not sub.seq_violations, f"seq went backwards: {sub.seq_violations[:5]}; {context}"
    bad_sub_errors = [c for c in sub.errors
                      if c not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)]
    assert not bad_sub_errors, f"getUpdates ended with {bad_sub_errors}; {context}"
    assert not failed_silently, f"FAILED without a reason: {list(failed_silently)[:5]}; {context}"
    # An item fails only after MAX_ATTEMPTS attempts died under it: rare.
    assert len(failed) <= max(2, len(accepted) // 200), \
        f"{len(failed)} of {len(accepted)} items FAILED: {list(failed.items())[:5]}; {context}"
    assert kills > 0 and reloads > 0 and len(accepted) > 0, f"no chaos happened; {summary}"
    if CHAOS_SECONDS >= 10:
        assert grpc_kills > 0, f"the grpc process was never killed; {summary}"
    # Finals lost with an update log: at most what one process can have
    # published and not sent when it died, per kill.
    assert len(silenced) <= 2 * MAX_OUTSTANDING * grpc_kills, \
        f"{len(silenced)} accepted items never got a final update: {silenced[:5]}; {context}"

    # A retired worker finishes what it holds (here at most 2 items of at
    # most 50 ms) and exits: at a reload, 3 old + 3 new, and a few still
    # finishing from the reload before. More means retired workers linger.
    assert max_workers <= 9, \
        f"{max_workers} worker processes at once (configured 2 or 3): retired workers " \
        f"do not exit; {context}; log:\n{d.log_tail()}"
    try:
        d.wait_ready(workers=count, timeout=3)
    except AssertionError as e:
        raise AssertionError(f"after the chaos, not exactly {count} workers: {e}") from None

    # Every death so far was one of ours or a retired worker's clean exit;
    # no sanitizer spoke (with an ASan build: make check-asan).
    log = d.log_text()
    sanitizer = SANITIZER_REPORT.search(log)
    assert sanitizer is None, f"sanitizer report in the log: {sanitizer.group(0)}; " \
        f"{context}; log:\n{d.log_tail(60)}"
    # When the grpc process dies the master SIGKILLs every worker (their
    # items died with it): "...: its grpc process exited", or without the
    # reason for a retiring worker. Those follow the grpc process's death
    # line, at most a reload's worth of workers (9) later.
    unexpected = []
    grpc_death = None           # index of the last death line of a grpc process we killed
    for n, m in enumerate(DEATH.finditer(log)):
        ours = m.group("signal") == "9" and int(m.group("pid")) in killed
        if m.group("role") == "grpc process" and ours:
            grpc_death = n
        if (m.group("role") == "worker" and m.group("status") == "0") or ours:
            continue
        if (m.group("role") == "worker" and m.group("signal") == "9" and grpc_death is not None
                and (n - grpc_death <= 9 or "its grpc process exited" in m.group(0))):
            continue
        unexpected.append(m.group(0))
    assert not unexpected, f"deaths the test did not cause: {unexpected[:5]}; {context}"

    # Every dead instance was taken over: only the live process's is left.
    instances = sorted(p.name for p in journal.iterdir() if p.name.startswith("grpc-"))
    assert len(instances) == 1 and instances[0].endswith(f"-{d.grpc_pid()}"), \
        f"journal instances after the chaos: {instances}; {context}"

    # Stop; nothing of this daemon may be left.
    d.workers()                                 # record the last pids
    status = d.stop(signal.SIGTERM)
    assert status == 0, f"exit status {status} after TERM; log:\n{d.log_tail()}"
    try:
        wait_for(lambda: not daemon_processes(d), 5, "every process of the daemon to exit")
    except AssertionError:
        left = daemon_processes(d)
        raise AssertionError(f"{len(left)} dosomethingd processes left after the stop: "
                             f"{left}; {context}") from None
    assert len(daemon_processes(d)) == 0


# ---- what the chaos found, each on its own ---------------------------------------

def _submit_forever(client, stop, prefix):
    n = 0
    while not stop.is_set():
        client.submit_retrying([{"id": f"{prefix}{n}-{k}", "kind": "sleep", "params": {"ms": "10"}}
                                for k in range(10)])
        n += 1


@pytest.mark.deadline(30)
def test_retired_workers_exit_under_load(start_daemon):
    """A reload while items keep coming: the old workers finish the items
    they hold (10 ms each) and exit. shutdown_timeout is long, so the
    master's retire timer cannot be what ends them."""
    d = start_daemon({"workers": {"count": 2}, "shutdown_timeout": "30s"})
    client = d.client()
    stop = threading.Event()
    load = threading.Thread(target=_submit_forever, args=(client, stop, "r"), daemon=True)
    load.start()
    try:
        time.sleep(1)
        old = set(d.worker_pids())
        d.write_config({"workers": {"count": 3}, "shutdown_timeout": "30s"})
        d.send_signal(signal.SIGHUP)
        try:
            wait_for(lambda: not any(pid_alive(p) for p in old), 3,
                     "the retired workers to exit")
        except AssertionError as e:
            lingering = sorted(p for p in old if pid_alive(p))
            raise AssertionError(f"{e}: {lingering} still alive under load, holding nothing; "
                                 f"log:\n{d.log_tail(12)}") from None
    finally:
        stop.set()
        load.join(timeout=20)


@pytest.mark.deadline(30)
def test_reloads_do_not_postpone_the_retire_deadline(start_daemon):
    """A retired worker still busy after shutdown_timeout is killed then,
    however many reloads come after it."""
    d = start_daemon({"workers": {"count": 1}, "shutdown_timeout": "2s",
                      "queue": {"max_attempts": 10}})
    client = d.client()
    sub = client.subscribe(sync=True)
    reply = client.submit([{"id": "long", "kind": "sleep", "params": {"ms": "60000"}}])
    assert reply.accepted == 1
    busy = sub.wait_state("long", pb.STARTED, timeout=5).worker_pid
    t0 = time.monotonic()
    d.send_signal(signal.SIGHUP)                # retires `busy`; its deadline is t0 + 2 s
    killed_at = None
    while time.monotonic() < t0 + 6:
        time.sleep(0.5)
        if killed_at is None and not pid_alive(busy):
            killed_at = time.monotonic() - t0
        d.send_signal(signal.SIGHUP)            # every 0.5 s: each retires the next worker
    assert killed_at is not None and killed_at < 3.5, \
        f"worker {busy}, retired at 0 s with shutdown_timeout 2s, " \
        f"{'still alive at 6 s' if killed_at is None else f'killed only at {killed_at:.1f} s'} " \
        f"while reloads kept coming; log:\n{d.log_tail(12)}"
