"""
dosomething get, list, cancel, retry and submit --results against the real
daemon: what a user sees (stdout, stderr, exit status) and what the daemon
did.
"""
import base64
import json

from test_cli import EXIT_NEGATIVE, EXIT_OK, EXIT_RPC, EXIT_USAGE, explain, json_lines, run


def echo(ident, payload="x", batch=""):
    return {"id": ident, "kind": "echo", "payload": payload, "batch": batch}


def sleeper(ident, ms=10000, batch=""):
    return {"id": ident, "kind": "sleep", "params": {"ms": ms}, "batch": batch}


def lines(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def reply_counts(stdout):
    return {k: int(v) for k, v in (line.split() for line in stdout.splitlines())}


def submit(daemon, items):
    r = run("submit", "--json", target=daemon, input=json_lines(items))
    assert r.returncode == EXIT_OK, explain(r)


def test_get_prints_a_table_and_json(daemon):
    submit(daemon, [echo("g1", "hello", "b"), echo("g2", "world", "b")])
    r = run("get", "--wait", "--timeout", "20s", "g1", "g2", target=daemon)
    assert r.returncode == EXIT_OK, explain(r)
    rows = r.stdout.splitlines()
    assert rows[0].split()[:5] == ["ID", "STATE", "ATTEMPT", "KIND", "BATCH"], explain(r)
    assert {row.split()[0]: row.split()[1] for row in rows[1:]} == \
        {"g1": "SUCCEEDED", "g2": "SUCCEEDED"}, explain(r)

    r = run("get", "--json", "g1", "g2", target=daemon)
    assert r.returncode == EXIT_OK, explain(r)
    got = {i["id"]: i for i in lines(r.stdout)}
    assert base64.b64decode(got["g1"]["result_b64"]) == b"hello"
    assert base64.b64decode(got["g2"]["result_b64"]) == b"world"
    assert got["g1"]["state"] == "SUCCEEDED" and got["g1"]["batch"] == "b"
    assert got["g1"]["finished_unix_nano"] >= got["g1"]["accepted_unix_nano"] > 0


def test_get_unknown_id_exits_1_and_says_so(daemon):
    submit(daemon, [echo("known")])
    r = run("get", "--wait", "--timeout", "20s", "known", "never-sent", target=daemon)
    assert r.returncode == EXIT_NEGATIVE, explain(r)
    assert "known" in r.stdout and "never-sent" not in r.stdout, explain(r)
    assert 'item "never-sent": not found' in r.stderr, explain(r)


def test_get_wait_times_out_as_deadline_exceeded(daemon):
    submit(daemon, [sleeper("slow", 20000)])
    r = run("get", "--wait", "--timeout", "500ms", "slow", target=daemon)
    assert r.returncode == EXIT_RPC, explain(r)
    assert "DEADLINE_EXCEEDED" in r.stderr, explain(r)
    run("cancel", "slow", target=daemon)


def test_get_usage_errors(daemon):
    for args, message in [(("get",), "no item id"), (("get", ""), "must not be empty"),
                          (("list", "--state", "DONE"), "--state takes"),
                          (("list", "--limit", "1001"), "--limit takes"),
                          (("list", "an-id"), "unexpected argument"),
                          (("cancel",), "no item id and no --batch"),
                          (("retry", "--batch", ""), "must not be empty"),
                          (("cancel", "--reason", "x" * 1025, "a"), "longer than"),
                          (("submit", "--results"), "give --wait")]:
        r = run(*args, target=daemon)
        assert r.returncode == EXIT_USAGE, (args, explain(r))
        assert message in r.stderr, (args, explain(r))


def test_list_pages_newest_first_with_filters(daemon):
    submit(daemon, [echo(f"l-{n:03}", batch="listed") for n in range(25)] + [echo("other")])
    run("get", "--wait", "--timeout", "20s", *[f"l-{n:03}" for n in range(25)], target=daemon)
    r = run("list", "--json", "--batch", "listed", "--limit", "7", target=daemon)
    assert r.returncode == EXIT_OK, explain(r)
    ids = [i["id"] for i in lines(r.stdout)]
    assert ids == [f"l-{n:03}" for n in reversed(range(25))], explain(r)

    r = run("list", "--state", "succeeded", "--kind", "echo", "--batch", "listed",
            target=daemon)
    assert r.returncode == EXIT_OK, explain(r)
    assert len(r.stdout.splitlines()) == 1 + 25, explain(r)


def test_cancel_and_retry_by_id_and_batch(daemon):
    # Two workers busy with long sleeps: the rest wait in the queue.
    submit(daemon, [sleeper("busy-1"), sleeper("busy-2")]
           + [sleeper(f"c-{n}", 100, batch="doomed") for n in range(4)])
    r = run("cancel", "--reason", "not needed", "c-0", "nobody", target=daemon)
    assert r.returncode == EXIT_NEGATIVE, explain(r)
    assert reply_counts(r.stdout) == {"cancelled": 1, "already_final": 0, "not_found": 1}
    assert 'item "nobody": not found' in r.stderr, explain(r)

    r = run("cancel", "--batch", "doomed", target=daemon)
    assert r.returncode == EXIT_OK, explain(r)
    assert reply_counts(r.stdout) == {"cancelled": 3, "already_final": 1, "not_found": 0}

    r = run("get", "--json", "c-0", target=daemon)
    (item,) = lines(r.stdout)
    assert item["state"] == "CANCELLED" and "not needed" in item["error"], explain(r)

    r = run("list", "--state", "CANCELLED", "--json", target=daemon)
    assert sorted(i["id"] for i in lines(r.stdout)) == [f"c-{n}" for n in range(4)]

    r = run("retry", "--batch", "doomed", target=daemon)
    assert r.returncode == EXIT_OK, explain(r)
    assert reply_counts(r.stdout) == {"requeued": 4, "not_retryable": 0, "not_found": 0}
    r = run("retry", "busy-1", target=daemon)
    assert r.returncode == EXIT_NEGATIVE, explain(r)
    assert reply_counts(r.stdout) == {"requeued": 0, "not_retryable": 1, "not_found": 0}

    r = run("cancel", "busy-1", "busy-2", target=daemon)
    assert reply_counts(r.stdout)["cancelled"] == 2, explain(r)
    r = run("get", "--wait", "--timeout", "30s", "--json", *[f"c-{n}" for n in range(4)],
            target=daemon)
    assert r.returncode == EXIT_OK, explain(r)
    assert {i["state"] for i in lines(r.stdout)} == {"SUCCEEDED"}, explain(r)


def test_submit_wait_results_prints_each_final(daemon):
    items = [echo("r1", "one"), echo("r2", "two"),
             {"id": "r3", "kind": "sleep", "params": {"ms": 5000}, "timeout_ms": 100,
              "max_attempts": 1}]
    r = run("submit", "--json", "--wait", "--results", target=daemon, input=json_lines(items))
    assert r.returncode == EXIT_NEGATIVE, explain(r)
    finals = {i["id"]: i for i in lines("\n".join(l for l in r.stdout.splitlines()
                                                  if l.startswith("{")))}
    assert base64.b64decode(finals["r1"]["result_b64"]) == b"one"
    assert base64.b64decode(finals["r2"]["result_b64"]) == b"two"
    assert finals["r3"]["state"] == "FAILED" and finals["r3"]["error"], explain(r)


def test_submit_resent_ids_are_duplicates_not_reruns(daemon):
    submit(daemon, [echo("once", "first")])
    r = run("submit", "--json", target=daemon, input=json_lines([echo("once", "second")]))
    assert r.returncode == EXIT_OK, explain(r)
    assert "duplicates 1" in r.stdout, explain(r)
    r = run("get", "--wait", "--timeout", "20s", "--json", "once", target=daemon)
    (item,) = lines(r.stdout)
    assert base64.b64decode(item["result_b64"]) == b"first", explain(r)
