#!/usr/bin/env node
// dosomething-client: submit work items from a file to dosomethingd and
// follow them to their final state, across reconnects and server restarts.
// The same program as contrib/clients/python/dosomething_client.py, with
// the same options, input, output and exit status (see ../README.md).
//
//   node dosomething-client.js [--address HOST:PORT] [--kind KIND] [--param K=V]... ITEMS
//
// How it stays correct across disconnects:
//  - It subscribes (getUpdates on its batch labels, states SUCCEEDED, FAILED,
//    RETRYING) before submitting, and submits only while subscribed.
//  - It remembers the seq of the last update. A broken stream (UNAVAILABLE,
//    RESOURCE_EXHAUSTED) is resumed with replay=true, after_seq=last.
//  - A stream the server ended itself (OK: graceful stop, upgrade), or a
//    submit call that failed without an answer, means the next server may be
//    a new daemon with its own seq numbering: it resumes with after_seq=0
//    (the batch label is unique to the run) and drops duplicates by item id.
//  - A submit call that failed with UNAVAILABLE (or CANCELLED, which a server
//    answers to a call that reaches it as it begins a graceful stop) is sent
//    again whole, with the same ids: what the first attempt got accepted the
//    server counts in SubmitReply.duplicates and does not run again.
//  - After its update stream was broken (and after a reply that counts
//    duplicates) it asks getItems (by id, with results) for the items it is
//    still waiting for, so what finished meanwhile is not lost.
//
// require()d as a module it exports ItemsClient: thin wrappers of getItems,
// cancel and retry (see ../README.md).
//  - Behind a balancer that says which instance served a call (the header
//    x-dosomething-instance, contrib/nginx/dosomething.conf), it moves its
//    subscription after its submissions when they land on another instance,
//    once the items of the instance it watches are final.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const { parseArgs } = require('util');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_REL = path.join('com', 'agrounds', 'dosomething', 'v1', 'do_something.proto');
const AFFINITY_HEADER = 'x-dosomething-affinity';
const INSTANCE_HEADER = 'x-dosomething-instance';     // set by a balancer: who answered
const EXIT_OK = 0, EXIT_FAILED = 1, EXIT_USAGE = 2, EXIT_GAVE_UP = 3;
const FINAL_STATES = new Set(['SUCCEEDED', 'FAILED', 'CANCELLED']);
const LOOKUP_IDS = 500;       // ids per getItems call (the server takes up to 1000)

const S = grpc.status;
const RESUMABLE = new Set([S.UNAVAILABLE, S.RESOURCE_EXHAUSTED, S.ABORTED, S.INTERNAL,
                           S.UNKNOWN, S.CANCELLED]);

// Status codes after which an unanswered doSomething call is sent again. A
// gRPC C-core server answers CANCELLED to a call that reaches it just as it
// begins a graceful stop; this client never cancels its own submit calls.
const RESUBMIT = new Set([S.UNAVAILABLE, S.CANCELLED]);

const CHANNEL_OPTIONS = {
  'grpc.initial_reconnect_backoff_ms': 100,
  'grpc.max_reconnect_backoff_ms': 2000,
  'grpc.max_receive_message_length': -1,
  'grpc.max_send_message_length': -1,
};

class UsageError extends Error {}

// The instance a balancer says answered a call (the last address of nginx's
// $upstream_addr), or null.
function instanceOf(metadata) {
  const values = metadata ? metadata.get(INSTANCE_HEADER) : [];
  if (!values.length) return null;
  return String(values[values.length - 1]).split(',').pop().trim() || null;
}

function log(msg) {
  process.stderr.write(`dosomething-client: ${msg}\n`);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

// ---------------------------------------------------------------------------
// the contract
// ---------------------------------------------------------------------------

function findProto(explicit) {
  if (explicit) return path.resolve(explicit);
  if (process.env.DS_PROTO) return path.resolve(process.env.DS_PROTO);
  let dir = __dirname;
  for (let i = 0; i < 6; i++) {
    const candidate = path.join(dir, 'proto', PROTO_REL);
    if (fs.existsSync(candidate)) return candidate;
    dir = path.dirname(dir);
  }
  throw new UsageError('cannot find do_something.proto: give --proto FILE');
}

function loadService(protoArg) {
  const file = findProto(protoArg);
  if (!fs.existsSync(file)) throw new UsageError(`${file}: no such file`);
  let def;
  try {
    def = protoLoader.loadSync(file, {
      keepCase: true,       // field names as in the .proto: item_id, after_seq
      longs: String,        // uint64 seq as a decimal string, never rounded
      enums: String,
      defaults: true,
    });
  } catch (e) {
    throw new UsageError(`${file}: ${e.message}`);
  }
  const pkg = grpc.loadPackageDefinition(def);
  const service = pkg.com && pkg.com.agrounds.dosomething.v1.DoSomethingService;
  if (!service) throw new UsageError(`${file}: no com.agrounds.dosomething.v1.DoSomethingService`);
  return service;
}

// ---------------------------------------------------------------------------
// the item calls: thin wrappers
// ---------------------------------------------------------------------------

// getItems, cancel and retry of one server, as promises of the server's
// reply (an object with the .proto's field names; uint64 counts as decimal
// strings). A failed call rejects with grpc-js's error (.code, .details).
//
//   const { ItemsClient, loadService } = require('./dosomething-client.js');
//   const c = ItemsClient.connect('127.0.0.1:8080');
//   const reply = await c.getItems({ ids: ['img-1'], withResults: true });
//   await c.cancel({ batches: ['job-1'], reason: 'not needed' });
//   await c.retry({ ids: await c.deadLetters({ batches: ['job-1'] }) });
//   c.close();
class ItemsClient {
  // client: a DoSomethingService client (loadService()); metadata: a
  // function returning the grpc.Metadata to send with each call, or null.
  constructor(client, metadata = null) {
    this.client = client;
    this.metadata = metadata || (() => new grpc.Metadata());
  }

  static connect(address, { proto = undefined, credentials = grpc.credentials.createInsecure() } = {}) {
    const Service = loadService(proto);
    return new ItemsClient(new Service(address, credentials, CHANNEL_OPTIONS));
  }

  close() { this.client.close(); }

  unary(method, req, timeoutMs) {
    const options = timeoutMs ? { deadline: new Date(Date.now() + timeoutMs) } : {};
    return new Promise((resolve, reject) => {
      this.client[method](req, this.metadata(), options,
        (err, reply) => (err ? reject(err) : resolve(reply)));
    });
  }

  // ItemsReply: the items of ids (unknown ones in not_found), or one page of
  // the items matching kinds, states and batches. wait (by ids): the reply
  // comes once every known one is final, or DEADLINE_EXCEEDED at timeoutMs.
  getItems({ ids = [], kinds = [], states = [], batches = [], withResults = false, wait = false,
             limit = 0, pageToken = '', timeoutMs = 0 } = {}) {
    return this.unary('getItems', {
      item_ids: ids, kinds, states, batches, with_results: withResults, wait, limit,
      page_token: pageToken,
    }, timeoutMs);
  }

  // Every item matching the filters, newest accepted first, page after page.
  async listItems({ kinds = [], states = [], batches = [], withResults = false, timeoutMs = 0 } = {}) {
    const out = [];
    let pageToken = '';
    do {
      const reply = await this.getItems({ kinds, states, batches, withResults, limit: 1000, pageToken, timeoutMs });
      out.push(...reply.items);
      pageToken = reply.next_page_token;
    } while (pageToken);
    return out;
  }

  // The ids of the FAILED items (of these batches and kinds).
  async deadLetters({ batches = [], kinds = [], timeoutMs = 0 } = {}) {
    return (await this.listItems({ batches, kinds, states: ['FAILED'], timeoutMs })).map((it) => it.id);
  }

  // CancelReply: cancelled, already_final, not_found.
  cancel({ ids = [], batches = [], reason = '', timeoutMs = 0 } = {}) {
    return this.unary('cancel', { item_ids: ids, batches, reason }, timeoutMs);
  }

  // RetryReply: requeued, not_retryable, not_found.
  retry({ ids = [], batches = [], timeoutMs = 0 } = {}) {
    return this.unary('retry', { item_ids: ids, batches }, timeoutMs);
  }
}

// An Update-shaped object carrying what getItems says of an item.
function updateOfItem(item) {
  return {
    seq: item.last_seq, item_id: item.id, kind: item.kind, state: item.state, result: item.result,
    error: item.error, attempt: item.attempt, worker_pid: item.worker_pid, batch: item.batch,
  };
}

// ---------------------------------------------------------------------------
// input
// ---------------------------------------------------------------------------

const ITEM_KEYS = new Set(['id', 'kind', 'payload', 'payload_b64', 'params', 'batch',
                           'timeout_ms', 'max_attempts']);

function parseParam(text) {
  const at = text.indexOf('=');
  if (at < 0) throw new UsageError(`--param ${JSON.stringify(text)}: expected KEY=VALUE`);
  return [text.slice(0, at), text.slice(at + 1)];
}

function splitLines(buf) {
  const lines = [];
  let start = 0;
  for (;;) {
    const nl = buf.indexOf(10, start);
    if (nl < 0) { lines.push(buf.subarray(start)); break; }
    lines.push(buf.subarray(start, nl));
    start = nl + 1;
  }
  return lines;
}

function toUint32(value, key) {
  const n = typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : value;
  if (!Number.isInteger(n) || n < 0 || n >= 2 ** 32) throw new Error(`${key} must be an integer 0..2^32-1`);
  return n;
}

function readItems(file, args) {
  const defaultParams = Object.fromEntries(args.param.map(parseParam));
  let data;
  try {
    data = file === '-' ? fs.readFileSync(0) : fs.readFileSync(file);
  } catch (e) {
    throw new UsageError(`${file}: ${e.message}`);
  }
  const items = [];
  const seen = new Set();
  splitLines(data).forEach((rawLine, index) => {
    const lineno = index + 1;
    let raw = rawLine;
    if (raw.length && raw[raw.length - 1] === 13) raw = raw.subarray(0, raw.length - 1);
    const text = raw.toString('utf8');
    if (!text.trim()) return;
    let spec = null;
    if (args.format !== 'lines' && text.trimStart().startsWith('{')) {
      try {
        spec = JSON.parse(text);
      } catch (e) {
        if (args.format === 'jsonl') throw new UsageError(`${file}:${lineno}: not JSON: ${e.message}`);
      }
      if (spec !== null && (typeof spec !== 'object' || Array.isArray(spec))) spec = null;
    } else if (args.format === 'jsonl') {
      throw new UsageError(`${file}:${lineno}: not a JSON object`);
    }
    const item = {
      kind: args.kind, params: { ...defaultParams }, batch: args.batch,
      timeout_ms: args.timeoutMs, max_attempts: args.maxAttempts,
    };
    if (spec === null) {
      item.payload = Buffer.from(raw);
    } else {
      const unknown = Object.keys(spec).filter((k) => !ITEM_KEYS.has(k));
      if (unknown.length) {
        throw new UsageError(`${file}:${lineno}: unknown key(s) ${JSON.stringify(unknown.sort())}; `
                             + `known: ${JSON.stringify([...ITEM_KEYS].sort())}`);
      }
      try {
        if ('payload_b64' in spec) {
          const b64 = String(spec.payload_b64);
          if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64) || b64.length % 4) throw new Error('payload_b64 is not base64');
          item.payload = Buffer.from(b64, 'base64');
        } else {
          item.payload = Buffer.from(String(spec.payload ?? ''), 'utf8');
        }
        if ('params' in spec) {
          if (typeof spec.params !== 'object' || spec.params === null || Array.isArray(spec.params)) {
            throw new Error('params must be an object');
          }
          for (const [k, v] of Object.entries(spec.params)) {
            item.params[k] = typeof v === 'string' ? v : JSON.stringify(v);
          }
        }
        for (const key of ['id', 'kind', 'batch']) if (key in spec) item[key] = String(spec[key]);
        for (const key of ['timeout_ms', 'max_attempts']) if (key in spec) item[key] = toUint32(spec[key], key);
      } catch (e) {
        throw new UsageError(`${file}:${lineno}: ${e.message}`);
      }
    }
    if (!item.id) item.id = `${args.batch}-${items.length}`;
    if (seen.has(item.id)) throw new UsageError(`${file}:${lineno}: duplicate id ${JSON.stringify(item.id)}`);
    seen.add(item.id);
    items.push(item);
  });
  return items;
}

// ---------------------------------------------------------------------------
// the run
// ---------------------------------------------------------------------------

class Backoff {
  constructor(low = 100, high = 2000) { this.low = low; this.high = high; this.next = low; }
  reset() { this.next = this.low; }
  delay() {
    const d = this.next * (0.8 + 0.4 * Math.random());
    this.next = Math.min(this.high, this.next * 2);
    return d;
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

class Run {
  constructor(Service, args, items) {
    this.args = args;
    this.items = items;
    this.deadline = Date.now() + args.deadline * 1000;
    this.client = new Service(args.address, grpc.credentials.createInsecure(), CHANNEL_OPTIONS);
    this.batches = [...new Set(items.map((it) => it.batch))].sort();
    this.ids = new Set(items.map((it) => it.id));
    this.items_ = new ItemsClient(this.client, () => this.metadata());

    this.accepted = new Set();      // ids the server has (accepted or duplicate, in a reply)
    this.sent = new Set();          // ids sent at least once
    this.counts = { accepted: 0, duplicates: 0, rejected: 0 };  // SubmitReply sums
    this.lookedUp = 0;              // finals learned from getItems, not from the stream
    this.lookups = 0;               // getItems calls made
    this.lookupAfterSubscribe = false;  // the stream broke: look up what is open
    this.noLookups = false;         // the server has no getItems (UNIMPLEMENTED)
    this.elsewhere = new Set();     // duplicates in batches the stream does not watch
    this.waiter = null;             // the loop that waits for those with getItems
    this.final = new Map();         // id -> first final update
    this.rejected = new Map();      // id -> reason
    this.open = new Set();          // submitted, no final yet (for --window)
    this.submitting = true;
    this.duplicates = 0;
    this.retriesSeen = 0;
    this.reconnects = 0;
    this.resubmits = 0;
    this.fatal = null;
    this.subscribed = false;
    this.fromZero = false;
    this.lastSeq = '0';
    this.call = null;
    this.closing = false;
    this.waiters = [];
    this.lastReconnectLog = 0;
    this.watchInstance = null;    // where the open subscription is, if a balancer says
    this.itemInstance = new Map(); // id -> where it was accepted, if a balancer says
    this.switchTo = null;         // submissions now land there
    this.switching = false;
    this.switches = 0;
  }

  left() { return this.deadline - Date.now(); }

  metadata() {
    const md = new grpc.Metadata();
    if (!this.args.noAffinity) md.set(AFFINITY_HEADER, this.args.batch);
    return md;
  }

  notify() {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  // Until pred(); false if the run must stop (fatal error, deadline, watcher gone).
  async waitFor(pred, what) {
    while (!pred()) {
      if (this.fatal) return false;
      const left = this.left();
      if (left <= 0) {
        log(`gave up after ${this.args.deadline} s waiting for ${what}`);
        return false;
      }
      if (this.watcherDone) {
        this.fatal = 'the getUpdates watcher stopped';
        return false;
      }
      let timer;
      await new Promise((resolve) => {
        this.waiters.push(resolve);
        timer = setTimeout(resolve, Math.min(left, 500));
      });
      clearTimeout(timer);
    }
    return true;
  }

  emit(record) {
    process.stdout.write(JSON.stringify(record) + '\n');
  }

  emitUpdate(u, lookedUp = false) {
    const seq = Number(u.seq);
    const rec = {
      id: u.item_id, state: u.state, kind: u.kind, batch: u.batch,
      seq: Number.isSafeInteger(seq) ? seq : u.seq, attempt: u.attempt, worker_pid: u.worker_pid,
    };
    if (lookedUp) rec.looked_up = true;
    if (u.state === 'SUCCEEDED') {
      try { rec.result = utf8.decode(u.result); } catch (e) { /* not text */ }
      rec.result_b64 = u.result.toString('base64');
    } else {
      rec.error = u.error;
    }
    this.emit(rec);
  }

  // ---- watching -------------------------------------------------------

  async watch() {
    const backoff = new Backoff();
    for (;;) {
      if (this.closing || this.fatal || this.left() <= 0) return;
      const after = this.fromZero ? '0' : this.lastSeq;
      const req = {
        replay: true, after_seq: after, batches: this.batches,
        states: ['SUCCEEDED', 'FAILED', 'CANCELLED', 'RETRYING'],
      };
      const call = this.client.getUpdates(req, this.metadata(), { deadline: new Date(this.deadline) });
      this.call = call;
      let hadSubscription = false;
      // The daemon sends the headers once the subscriber is registered:
      // from then on nothing submitted can be missed.
      call.on('metadata', (metadata) => {
        if (this.closing) return;
        hadSubscription = true;
        this.subscribed = true;
        this.fromZero = false;
        this.switching = false;
        this.watchInstance = instanceOf(metadata);
        this.maybeSwitch();
        this.notify();
        // Subscribed again after a break: what finished meanwhile (perhaps
        // in a grpc process that died since) is in getItems; what finishes
        // from now on comes on this stream.
        if (this.lookupAfterSubscribe) {
          this.lookupAfterSubscribe = false;
          this.lookup(this.waitingFor()).then((ok) => { if (!ok) this.lookupAfterSubscribe = true; });
        }
      });
      let endedOk = false;
      let error = null;
      try {
        for await (const u of call) {
          backoff.reset();
          this.onUpdate(u);
          if (this.finished()) {
            call.cancel();
            return;
          }
        }
        endedOk = true;
      } catch (e) {
        error = e;
      } finally {
        this.subscribed = false;
        this.call = null;
        this.notify();
      }
      if (this.closing) return;
      let why;
      if (this.switching && error && error.code === S.CANCELLED) {
        why = `following the submissions to ${this.switchTo}`;
      } else if (endedOk) {
        // The server ended the stream: it is stopping. The next one may
        // number its updates from 1 again.
        this.fromZero = true;
        why = 'the server ended the stream';
      } else {
        if (error.code === S.DEADLINE_EXCEEDED || this.left() <= 0) return;
        if (!RESUMABLE.has(error.code)) {
          this.fatal = `getUpdates: ${S[error.code]}: ${error.details}`;
          this.notify();
          return;
        }
        why = `${S[error.code]}: ${error.details}`;
      }
      if (!this.switching) this.reconnects++;
      if (hadSubscription) this.lookupAfterSubscribe = true;
      const delay = Math.min(backoff.delay(), Math.max(0, this.left()));
      const resumeAfter = this.fromZero ? '0' : this.lastSeq;
      if (!this.args.quiet && (hadSubscription || Date.now() - this.lastReconnectLog >= 5000)) {
        this.lastReconnectLog = Date.now();
        log(`getUpdates ended (${why}); resubscribing with replay after seq ${resumeAfter} `
            + `in ${(delay / 1000).toFixed(2)} s`);
      }
      await sleep(delay);
    }
  }

  onUpdate(u) {
    this.lastSeq = u.seq;
    if (!this.ids.has(u.item_id)) return;       // another run's item in a shared batch
    if (u.state === 'RETRYING') {
      this.retriesSeen++;
      if (this.args.verbose) log(`${u.item_id} retrying: ${u.error}`);
      return;
    }
    this.onFinal(u, false);
  }

  // A final update of one of our items, from the stream or getItems: printed
  // if it is the first for its id.
  onFinal(u, lookedUp) {
    if (this.final.has(u.item_id)) {
      if (!lookedUp) this.duplicates++;
      return;
    }
    if (lookedUp) this.lookedUp++;
    this.final.set(u.item_id, u);
    this.open.delete(u.item_id);
    this.maybeSwitch();
    // A resent call may have been rejected while the unanswered first
    // attempt got the item accepted: it ran after all.
    if (this.rejected.delete(u.item_id)) this.accepted.add(u.item_id);
    this.emitUpdate(u, lookedUp);
    this.notify();
  }

  // ---- looking up -----------------------------------------------------

  // Ids sent and not known to be final or rejected.
  waitingFor() {
    return [...this.sent].filter((id) => !this.final.has(id) && !this.rejected.has(id)).sort();
  }

  // Ask getItems for ids (with results): record the finals among them; ids
  // of batches the stream does not watch that are not final yet are waited
  // for by waitLoop. false if a call failed (the caller tries again later).
  async lookup(ids) {
    if (this.noLookups || !ids.length) return true;
    const todo = [];
    for (let i = 0; i < ids.length; i += LOOKUP_IDS) todo.push(ids.slice(i, i + LOOKUP_IDS));
    while (todo.length) {
      const part = todo.pop();
      let reply;
      try {
        this.lookups++;
        reply = await this.items_.getItems({
          ids: part, withResults: true, timeoutMs: Math.max(1000, Math.min(30000, this.left())),
        });
      } catch (e) {
        if (e.code === S.RESOURCE_EXHAUSTED && part.length > 1) {
          const half = part.length >> 1;    // the results do not fit one reply
          todo.push(part.slice(0, half), part.slice(half));
          continue;
        }
        if (e.code === S.UNIMPLEMENTED) {
          this.noLookups = true;            // an older server: the stream only
          return true;
        }
        if (!this.args.quiet) {
          log(`getItems of ${part.length} items failed: ${S[e.code]}: ${e.details}; `
              + 'looking them up again later');
        }
        return false;
      }
      for (const item of reply.items) {
        if (FINAL_STATES.has(item.state)) this.onFinal(updateOfItem(item), true);
        else if (!this.batches.includes(item.batch)) this.waitElsewhere(item.id);
      }
    }
    return true;
  }

  // A duplicate of an item in another batch (a run sent it before): its
  // updates do not come on our stream, so wait for it with getItems.
  waitElsewhere(id) {
    this.elsewhere.add(id);
    if (!this.waiter) this.waiter = this.waitLoop().catch((e) => { this.fatal = `waiter: ${e.stack || e}`; });
    this.notify();
  }

  async waitLoop() {
    const backoff = new Backoff();
    for (;;) {
      if (!await this.waitFor(() => this.closing || this.watcherDone
          || [...this.elsewhere].some((id) => !this.final.has(id)), 'the items of other batches')) return;
      if (this.closing || this.watcherDone) return;
      const ids = [...this.elsewhere].filter((id) => !this.final.has(id)).sort().slice(0, LOOKUP_IDS);
      let reply;
      try {
        reply = await this.items_.getItems({
          ids, withResults: true, wait: true, timeoutMs: Math.max(100, Math.min(30000, this.left())),
        });
        backoff.reset();
      } catch (e) {
        if (e.code !== S.DEADLINE_EXCEEDED) await sleep(Math.min(backoff.delay(), Math.max(0, this.left())));
        continue;
      }
      for (const item of reply.items) if (FINAL_STATES.has(item.state)) this.onFinal(updateOfItem(item), true);
    }
  }

  // Behind a balancer with affinity, a run's calls can move to another
  // instance while its subscription stays where it is (an instance it had
  // left came back, say). Once every item accepted where the subscription is
  // has its final update, subscribe again (replaying from 0), which lands
  // where the submissions go.
  maybeSwitch() {
    if (this.switchTo === null || this.switching || !this.subscribed || !this.call
        || this.watchInstance === null) {
      return;
    }
    if (this.switchTo === this.watchInstance) {
      this.switchTo = null;
      return;
    }
    for (const [id, where] of this.itemInstance) {
      if (where === this.watchInstance && !this.final.has(id)) return;
    }
    this.switching = true;
    this.fromZero = true;
    this.switches++;
    this.call.cancel();
  }

  allAcceptedFinal() {
    for (const id of this.accepted) if (!this.final.has(id)) return false;
    return true;
  }

  finished() { return !this.submitting && this.allAcceptedFinal(); }

  // ---- submitting -----------------------------------------------------

  submitOnce(messages) {
    return new Promise((resolve, reject) => {
      let where = null;
      const call = this.client.doSomething(this.metadata(),
        { deadline: new Date(Date.now() + Math.max(1000, this.left())) },
        (err, reply) => (err ? reject(err) : resolve({ reply, where })));
      call.on('metadata', (metadata) => { where = instanceOf(metadata); });
      // A call carries at most 1000 items; gRPC buffers what flow control holds back.
      for (const m of messages) call.write(m);
      call.end();
    });
  }

  async submitAll() {
    const { args } = this;
    const chunks = [];
    for (let i = 0; i < this.items.length; i += args.chunk) chunks.push(this.items.slice(i, i + args.chunk));
    for (let n = 0; n < chunks.length; n++) {
      const chunk = chunks[n];
      if (args.window && !await this.waitFor(
        () => this.open.size + chunk.length <= Math.max(args.window, chunk.length), 'room in the window')) {
        return false;
      }
      const messages = chunk.map((it) => ({
        id: it.id, kind: it.kind, payload: it.payload, params: it.params, batch: it.batch,
        timeout_ms: it.timeout_ms, max_attempts: it.max_attempts,
      }));
      const backoff = new Backoff();
      let reply, where;
      for (;;) {
        // Submit only while subscribed, so that no update can be missed.
        if (!await this.waitFor(() => this.subscribed, 'a getUpdates subscription')) return false;
        for (const it of chunk) {
          this.sent.add(it.id);
          if (!this.final.has(it.id)) this.open.add(it.id);
        }
        try {
          ({ reply, where } = await this.submitOnce(messages));
          break;
        } catch (e) {
          if (!RESUBMIT.has(e.code) || this.left() <= 0) {
            this.fatal = `doSomething: ${S[e.code]}: ${e.details}`;
            this.notify();
            return false;
          }
          // Unanswered: maybe none, maybe all of it was accepted. Sent again
          // with the same ids, what was accepted counts in duplicates. The
          // server may be a new one with its own seqs.
          this.fromZero = true;
          this.resubmits++;
          const delay = Math.min(backoff.delay(), Math.max(0, this.left()));
          if (!args.quiet) {
            log(`doSomething (call ${n + 1}/${chunks.length}, ${chunk.length} items) failed: `
                + `${S[e.code]}: ${e.details}; sending it again in ${(delay / 1000).toFixed(2)} s`);
          }
          await sleep(delay);
        }
      }
      const rejectedAt = new Map(reply.rejections.map((r) => [r.index, r.reason]));
      this.counts.accepted += Number(reply.accepted);
      this.counts.duplicates += Number(reply.duplicates);
      this.counts.rejected += Number(reply.rejected);
      if (Number(reply.rejected) > rejectedAt.size) {
        log(`the server listed ${rejectedAt.size} of ${reply.rejected} rejections`);
      }
      chunk.forEach((it, i) => {
        if (rejectedAt.has(i)) {
          this.open.delete(it.id);
          if (!this.final.has(it.id)) {
            this.rejected.set(it.id, rejectedAt.get(i));
            this.emit({ id: it.id, state: 'REJECTED', kind: it.kind, batch: it.batch, error: rejectedAt.get(i) });
          }
        } else {
          this.accepted.add(it.id);
          this.rejected.delete(it.id);
          if (where !== null) this.itemInstance.set(it.id, where);
        }
      });
      if (where !== null && this.watchInstance !== null && where !== this.watchInstance) {
        if (this.switchTo !== where && !args.quiet) {
          log(`calls now land on ${where}, the subscription is on ${this.watchInstance}: `
              + 'moving it once the items there are final');
        }
        this.switchTo = where;
      }
      this.maybeSwitch();
      this.notify();
      if (Number(reply.duplicates)) {
        // Items the server had already (an unanswered attempt of this call,
        // or an earlier run): some may be final, their updates published
        // before this subscription, or in another batch.
        const ids = chunk.filter((it, i) => !rejectedAt.has(i) && !this.final.has(it.id)).map((it) => it.id);
        if (!await this.lookup(ids)) this.lookupAfterSubscribe = true;
      }
    }
    this.submitting = false;
    this.notify();
    return true;
  }

  // ---- all of it ------------------------------------------------------

  async run() {
    const started = Date.now();
    this.watcherDone = false;
    const watcher = this.watch().catch((e) => {
      this.fatal = `watcher: ${e.stack || e}`;
    }).finally(() => {
      this.watcherDone = true;
      this.notify();
    });
    let ok = await this.submitAll();
    if (ok) ok = await this.waitFor(() => this.allAcceptedFinal(), 'the final updates');
    this.closing = true;
    if (this.call) this.call.cancel();
    await Promise.race([watcher, sleep(5000)]);
    this.client.close();
    return this.summarize((Date.now() - started) / 1000);
  }

  summarize(elapsed) {
    let succeeded = 0, failed = 0, cancelled = 0;
    for (const u of this.final.values()) {
      if (u.state === 'SUCCEEDED') succeeded++;
      else if (u.state === 'FAILED') failed++;
      else if (u.state === 'CANCELLED') cancelled++;
    }
    const openIds = [...this.accepted].filter((id) => !this.final.has(id)).sort();
    const unsent = this.ids.size - this.accepted.size - this.rejected.size;
    const summary = {
      items: this.items.length, accepted: this.counts.accepted, duplicates: this.counts.duplicates,
      rejected: this.counts.rejected, succeeded, failed, cancelled, open: openIds.length,
      not_submitted: unsent, looked_up: this.lookedUp, lookups: this.lookups,
      duplicates_ignored: this.duplicates, retrying_updates: this.retriesSeen,
      reconnects: this.reconnects, resubmitted_calls: this.resubmits, switches: this.switches,
      batch: this.args.batch, seconds: Math.round(elapsed * 1000) / 1000,
    };
    if (openIds.length) summary.open_ids = openIds.slice(0, 10);
    if (this.fatal) summary.error = this.fatal;
    process.stderr.write(`summary: ${JSON.stringify(summary)}\n`);
    if (this.fatal || openIds.length || unsent) return EXIT_GAVE_UP;
    if (failed || cancelled || this.rejected.size) return EXIT_FAILED;
    return EXIT_OK;
  }
}

// ---------------------------------------------------------------------------
// command line
// ---------------------------------------------------------------------------

const USAGE = `usage: dosomething-client.js [options] FILE

Submit work items from FILE (one per line: a raw payload, or a JSON object with
id, kind, payload, payload_b64, params, batch, timeout_ms, max_attempts; - for
standard input) to dosomethingd and print their final updates as JSON lines.

options:
  --address HOST:PORT  dosomethingd or a balancer (default $DS_ADDRESS or 127.0.0.1:8080)
  --proto FILE         do_something.proto (default: proto/ of this source tree, or $DS_PROTO)
  --format F           auto (a line starting with { is a JSON item), lines, jsonl
  --kind KIND          kind of items that name none (default: the server's default)
  --param KEY=VALUE    a handler parameter for every item (repeatable)
  --timeout-ms N       per item; 0: the handler's
  --max-attempts N     per item; 0: the server's
  --batch LABEL        batch of items that name none, and the balancer affinity key
                       (default: a new unique label)
  --chunk N            items per doSomething call, 1..1000 (default 500)
  --window N           at most N submitted items without a final update (0: no limit)
  --deadline SECONDS   give up after this long (default 600)
  --no-affinity        do not send the ${AFFINITY_HEADER} header
  --quiet              no reconnect messages on stderr
  --verbose            also log RETRYING updates
  -h, --help           this text

exit status: 0 all succeeded, 1 an item failed or was rejected, 2 bad usage or
input, 3 gave up (deadline passed with items open, or an unrecoverable error)`;

function parseCommandLine(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      address: { type: 'string', default: process.env.DS_ADDRESS || '127.0.0.1:8080' },
      proto: { type: 'string' },
      format: { type: 'string', default: 'auto' },
      kind: { type: 'string', default: '' },
      param: { type: 'string', multiple: true, default: [] },
      'timeout-ms': { type: 'string', default: '0' },
      'max-attempts': { type: 'string', default: '0' },
      batch: { type: 'string' },
      chunk: { type: 'string', default: '500' },
      window: { type: 'string', default: '0' },
      deadline: { type: 'string', default: '600' },
      'no-affinity': { type: 'boolean', default: false },
      quiet: { type: 'boolean', default: false },
      verbose: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    process.exit(EXIT_OK);
  }
  const int = (name, min, max) => {
    const n = Number(values[name]);
    if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`--${name} must be an integer ${min}..${max}`);
    return n;
  };
  if (positionals.length !== 1) throw new UsageError('expected one FILE argument (see --help)');
  if (!['auto', 'lines', 'jsonl'].includes(values.format)) throw new UsageError('--format must be auto, lines or jsonl');
  const deadline = Number(values.deadline);
  if (!(deadline > 0)) throw new UsageError('--deadline must be positive');
  return {
    file: positionals[0],
    address: values.address,
    proto: values.proto,
    format: values.format,
    kind: values.kind,
    param: values.param,
    timeoutMs: int('timeout-ms', 0, 2 ** 32 - 1),
    maxAttempts: int('max-attempts', 0, 2 ** 32 - 1),
    batch: values.batch ?? `client-${crypto.randomBytes(8).toString('hex')}`,
    chunk: int('chunk', 1, 1000),
    window: int('window', 0, 2 ** 31),
    deadline,
    noAffinity: values['no-affinity'],
    quiet: values.quiet,
    verbose: values.verbose,
  };
}

async function main() {
  let args, Service, items;
  try {
    args = parseCommandLine(process.argv.slice(2));
    Service = loadService(args.proto);
    items = readItems(args.file, args);
  } catch (e) {
    if (e instanceof UsageError || e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION'
        || e.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
      log(e.message);
      return EXIT_USAGE;
    }
    throw e;
  }
  if (!items.length) {
    log(`${args.file}: no items`);
    return EXIT_USAGE;
  }
  return new Run(Service, args, items).run();
}

module.exports = { ItemsClient, loadService };

if (require.main === module) {
  main().then((code) => {
    // Exit once stdout is flushed (it may be a pipe).
    process.stdout.write('', () => process.exit(code));
  }, (e) => {
    log(e.stack || String(e));
    process.exit(EXIT_GAVE_UP);
  });
}
