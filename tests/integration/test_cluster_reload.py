"""
A reload that turns `cluster:` on or off, or changes its redis or name
(docs/scaling.md: "Changing `redis` or `name` on a reload is logged and
takes effect when the grpc process next starts"): the grpc process that
reads it stays where it is, with a log line saying so; the next grpc
process (the master respawns a killed one with the config of the last
reload) uses the new setting.
"""
import os
import re
import signal
import time

import pytest

from conftest import SUCCEEDED, wait_for
from test_cluster import (cluster_config, cluster_name, redis, wait_serving,  # noqa: F401
                          work_len)

# src/grpc/store.c store_configure(), src/grpc/cluster.c cluster_configure()
SET = "cluster: set by this reload; it takes effect when the grpc process next starts"
CHANGED = ("cluster: {what} by this reload; this grpc process stays with {redis} and {{{name}}}:* "
           "until it next starts")


def held(overrides=None):
    """A kind `hold` (echo) that is paused: its items stay queued."""
    base = {"handlers": {"default": "echo", "echo": {"builtin": "echo"},
                         "hold": {"builtin": "echo", "paused": True}}}
    if overrides:
        base.update(overrides)
    return base


def uses(redis, name):
    """The line a grpc process logs when it starts with cluster: on (cluster.c)."""
    return rf"cluster: redis 127\.0\.0\.1:{redis.port}, keys \{{{name}\}}:\*, consumer"


def keys(redis, name):
    return redis.command("KEYS", f"{{{name}}}:*")


def item_key(redis, name, item_id):
    return redis.command("EXISTS", f"{{{name}}}:item:{item_id}") == 1


def reload(d, generation, config):
    d.write_config(config)
    d.send_signal(signal.SIGHUP)
    d.wait_log(rf"reloaded .*generation {generation}")


def kill_grpc(d):
    old = d.grpc_pid()
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: d.grpc_pid() not in (None, old), 10, "a new grpc process")
    d.wait_ready()
    return old


def echo(client, item_id):
    reply, sub = client.run_items([{"id": item_id, "kind": "echo", "payload": b"x"}])
    assert reply.accepted == 1 and sub.final[item_id].state == SUCCEEDED
    sub.cancel()


def submit_held(client, ids):
    reply = client.submit_retrying([{"id": i, "kind": "hold", "payload": b"h"} for i in ids])
    assert reply.accepted == len(ids), reply


@pytest.mark.deadline(60)
def test_reload_turning_cluster_on_applies_when_the_grpc_process_next_starts(redis,
                                                                            start_daemon):
    name = cluster_name()
    d = start_daemon(held({"workers": {"count": 2}}))
    c = d.client()
    reload(d, 2, cluster_config(redis, name, overrides=held()))
    d.wait_log(re.escape(SET))
    # Still the memory queue: nothing in Redis.
    submit_held(c, ["mem-1", "mem-2"])
    echo(c, "mem-echo")
    assert keys(redis, name) == []
    assert not re.search(r"cluster: redis \S+, keys", d.log_text())

    kill_grpc(d)
    wait_serving(d)
    d.wait_log(uses(redis, name))
    # The memory queue died with its process; what comes now is in Redis.
    assert c.get_items(["mem-1"], wait_for_ready=True).not_found == ["mem-1"]
    submit_held(c, ["redis-1", "redis-2"])
    assert item_key(redis, name, "redis-1") and item_key(redis, name, "redis-2")
    assert work_len(redis, name) == 2


@pytest.mark.deadline(60)
@pytest.mark.parametrize("change", ["off", "name"])
def test_reload_turning_cluster_off_or_renaming_it_applies_when_the_grpc_process_next_starts(
        redis, start_daemon, change):
    name = cluster_name()
    d = start_daemon(cluster_config(redis, name, lease="3s", overrides=held()))
    wait_serving(d)
    c = d.client()
    other = cluster_name()
    new = held({"workers": {"count": 2}}) if change == "off" \
        else cluster_config(redis, other, overrides=held())
    reload(d, 2, new)
    what = "turned off" if change == "off" else "redis or name changed"
    d.wait_log(re.escape(CHANGED.format(what=what, redis=redis.url, name=name)))

    # Until the grpc process restarts, it stays with the old keys. Turned
    # off, it keeps its lease too (the default, 10 s, is not taken; before,
    # it was, and min_replicas_ack fell to 0); renamed, the new lease (1 s)
    # applies at once, as a lease does. Its renewal says it again.
    lease_keys = redis.command("KEYS", f"{{{name}}}:lease:*")
    assert len(lease_keys) == 1, lease_keys
    time.sleep(1.5)
    want = b"3000" if change == "off" else b"1000"
    assert redis.command("GET", lease_keys[0]) == want, redis.command("GET", lease_keys[0])
    submit_held(c, ["before-1", "before-2"])
    assert item_key(redis, name, "before-1") and item_key(redis, name, "before-2")
    assert work_len(redis, name) == 2
    assert keys(redis, other) == []

    kill_grpc(d)
    if change == "off":
        # Memory: Redis is no longer touched, and its items stay there.
        submit_held(c, ["after-1"])
        echo(c, "after-echo")
        assert not item_key(redis, name, "after-1")
        assert work_len(redis, name) == 2
        assert len(re.findall(uses(redis, name), d.log_text())) == 1
    else:
        wait_serving(d)
        d.wait_log(uses(redis, other))
        submit_held(c, ["after-1"])
        assert item_key(redis, other, "after-1")
        assert not item_key(redis, name, "after-1")
        assert work_len(redis, name) == 2 and work_len(redis, other) == 1

