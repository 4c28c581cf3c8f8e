// The SDK against a real `deep-recall serve` (test/server.mjs), and its retries against a
// small fake server. Run by `npm test` after the build, so it tests what ships (dist/).
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { after, before, describe, test } from 'node:test';

import WebSocket, { WebSocketServer } from 'ws';

import { DeepRecall, DeepRecallError } from '../dist/esm/index.js';
import { startServer, token } from './server.mjs';

let server;
const clients = [];

function client(user, options = {}) {
  const dr = new DeepRecall({
    url: server.url,
    token: user === undefined ? undefined : token(user),
    webSocketImpl: WebSocket,
    retryDelayMs: 10,
    ...options,
  });
  clients.push(dr);
  return dr;
}

async function rejects(promise, code) {
  await assert.rejects(promise, (e) => {
    assert.ok(e instanceof DeepRecallError, `a DeepRecallError, not ${e}`);
    assert.equal(e.code, code, e.message);
    return true;
  });
}

async function collect(iterable) {
  const out = [];
  for await (const item of iterable) out.push(item);
  return out;
}

before(async () => {
  server = await startServer();
});

after(async () => {
  for (const c of clients) await c.close();
  server?.stop();
});

describe('against a real server', () => {
  test('messages are stored and found again, with lower-case enums', async () => {
    const alice = client('alice');
    const stored = await alice.addMessages('s1', [
      { role: 'user', content: 'My sister Margot lives in Lyon.', tags: ['family'] },
      { role: 'assistant', content: 'Lyon is lovely in spring.', createdAt: new Date() },
    ]);
    assert.deepEqual(
      stored.map((m) => [m.session, m.role]),
      [['s1', 'user'], ['s1', 'assistant']],
    );
    assert.deepEqual(stored[0].tags, ['family']);
    const hits = await alice.search('Where does my sister live?', { topK: 2 });
    assert.equal(hits.length, 2);
    assert.match(hits[0].memory.content, /Margot/);
    assert.equal(hits[0].memory.kind, 'message');
    assert.equal(hits[0].memory.role, 'user');
    assert.ok(hits[0].score > hits[1].score);
    const said = await alice.search('Where does my sister live?', { roles: ['assistant'] });
    assert.ok(said.length > 0);
    assert.ok(said.every((h) => h.memory.role === 'assistant'), JSON.stringify(said));
    const vector = await alice.search('Where does my sister live?', { mode: 'vector', topK: 1 });
    assert.ok(vector[0].similarity > 0.3, JSON.stringify(vector));
    const me = await alice.me();
    assert.equal(me.id, 'alice');
    assert.ok(me.memoryCount >= 2);
  });

  test('listings page through everything', async () => {
    const pager = client('pager');
    for (const s of ['a', 'b', 'c']) {
      await pager.addMessages(s, [
        { role: 'user', content: `first message in ${s}` },
        { role: 'user', content: `second message in ${s}` },
        { role: 'user', content: `third message in ${s}` },
      ]);
    }
    const sessions = await collect(pager.sessions({ pageSize: 2 }));
    assert.deepEqual(sessions.map((s) => s.id).sort(), ['a', 'b', 'c']);
    const messages = await collect(pager.messages('b', { pageSize: 2 }));
    assert.deepEqual(
      messages.map((m) => m.content),
      ['first message in b', 'second message in b', 'third message in b'],
    );
    const memories = await collect(pager.memories({ pageSize: 2 }));
    assert.equal(memories.length, 9);
    const inA = await collect(pager.memories({ pageSize: 2, filter: { session: 'a' } }));
    assert.equal(inA.length, 3);
  });

  test('a deleted memory is gone; deleting it again is NOT_FOUND', async () => {
    const dan = client('dan');
    const m = await dan.addMemory('Dan is allergic to peanuts.', { tags: ['health'] });
    assert.equal(m.kind, 'fact');
    assert.equal(await dan.deleteMemory(m.id), true);
    const hits = await dan.search('allergy');
    assert.ok(!hits.some((h) => h.memory.id === m.id));
    await rejects(dan.deleteMemory(m.id), 'NOT_FOUND');
  });

  test('a replaced fact leaves search and stays as history; metadata and TTLs', async () => {
    const fay = client('fay');
    const paris = await fay.addMemory('Fay lives in Paris.', { metadata: { topic: 'home' } });
    const berlin = await fay.addMemory('Fay moved to Berlin.', {
      supersedes: paris.id,
      metadata: { topic: 'home', priority: 3 },
    });
    assert.equal(berlin.supersedes, paris.id);
    const now = (await fay.search('Where does Fay live?')).map((h) => h.memory.id);
    assert.ok(now.includes(berlin.id) && !now.includes(paris.id), String(now));
    const history = await fay.memoryHistory(berlin.id);
    assert.deepEqual(history.map((m) => m.id), [paris.id, berlin.id]);
    assert.equal(history[0].supersededBy, berlin.id);
    const all = await fay.search('Where does Fay live?', { includeSuperseded: true });
    assert.ok(all.some((h) => h.memory.id === paris.id), 'the history on request');
    const then = await fay.search('Where does Fay live?', { asOf: paris.createdAt });
    assert.deepEqual(then.map((h) => h.memory.id), [paris.id]);
    // By when each was written: `since` is inclusive, `until` exclusive.
    const written = async (/** @type {object} */ f) =>
      (await fay.search('Where does Fay live?', { includeSuperseded: true, ...f })).map(
        (h) => h.memory.id,
      );
    const since = await written({ since: berlin.createdAt });
    assert.ok(since.includes(berlin.id) && !since.includes(paris.id), String(since));
    const until = await written({ until: new Date(berlin.createdAt) });
    assert.ok(until.includes(paris.id) && !until.includes(berlin.id), String(until));
    const high = await fay.search('Fay', { metadata: [{ key: 'priority', op: 'gte', value: 2 }] });
    assert.deepEqual(high.map((h) => h.memory.id), [berlin.id]);
    const brief = await fay.addMemory('Parking spot B12.', { ttlSeconds: 3600 });
    assert.ok(brief.expiresAt !== null && brief.expiresAt > brief.createdAt);
    await rejects(fay.addMemory('x', { ttlSeconds: 0 }), 'BAD_INPUT');
    await rejects(client('gus').addMemory('takeover', { supersedes: berlin.id }), 'NOT_FOUND');
  });

  test('a session\'s persona card becomes its persona memories', async () => {
    const ivy = client('ivy');
    const card =
      'You are Captain Rhea, a retired sea captain.\nRhea rounded Cape Horn twelve times.';
    const s = await ivy.createSession('voyage', { title: 'Voyage', persona: card });
    assert.deepEqual([s.id, s.title, s.persona], ['voyage', 'Voyage', card]);
    const q = 'How many times did the captain round Cape Horn?';
    const hits = await ivy.search(q, { kinds: ['persona'] });
    assert.ok(hits.length >= 1 && hits.every((h) => h.memory.kind === 'persona'), String(hits));
    assert.match(hits[0].memory.content, /Cape Horn/);
    // A title alone leaves the card; nobody else finds it.
    assert.equal((await ivy.createSession('voyage', { title: 'Renamed' })).persona, card);
    assert.deepEqual(await client('jay').search(q, { kinds: ['persona'] }), []);
  });

  test('memory keys are switched per user', async () => {
    const kim = client('kim');
    await kim.addMemory('Kim keeps bees on the roof.');
    assert.deepEqual(await kim.setMemoryKeys(false), { enabled: false, keys: 0 });
    assert.deepEqual(await kim.memoryKeys(), { enabled: false, keys: 0 });
    const on = await kim.setMemoryKeys(true);
    assert.equal(on.enabled, true);
    assert.equal((await kim.memoryKeys()).enabled, true);
  });

  test('background jobs: keys written and followed to the end; a scheduled deletion cancelled', async () => {
    const uma = client('uma');
    await uma.addMessages('harbour', [
      { role: 'user', content: 'We took the ferry across the Tagus estuary to the old shipyards.' },
      { role: 'assistant', content: "Exactly, that's the project." },
    ]);
    const queued = await uma.writeMemoryKeys({ context: true, facts: false, sessions: false });
    assert.equal(queued.kind, 'memory_keys');
    assert.ok(['queued', 'running', 'succeeded'].includes(queued.status), queued.status);
    const seen = await collect(uma.jobProgress(queued.id));
    assert.equal(seen[0].id, queued.id);
    const last = seen.at(-1);
    assert.equal(last.status, 'succeeded', JSON.stringify(seen));
    assert.ok(last.finishedAt !== null && typeof last.result === 'object', JSON.stringify(last));
    assert.deepEqual(await uma.job(queued.id), last);
    assert.ok((await uma.memoryKeys()).keys >= 1);
    // Another user can neither read nor follow it.
    const vic = client('vic');
    assert.equal(await vic.job(queued.id), null);
    await rejects(collect(vic.jobProgress(queued.id)), 'NOT_FOUND');
    await rejects(uma.writeMemoryKeys({ context: false, facts: false, sessions: false }), 'BAD_INPUT');
    // A deletion an hour ahead waits, and cancelled it never runs.
    const later = await uma.scheduleDeleteMyData(new Date(Date.now() + 3_600_000));
    assert.deepEqual([later.kind, later.status], ['delete_user', 'queued']);
    await rejects(vic.cancelJob(later.id), 'NOT_FOUND');
    assert.equal((await uma.cancelJob(later.id)).status, 'cancelled');
    assert.equal((await uma.job(later.id))?.status, 'cancelled');
    assert.ok((await uma.me()).memoryCount >= 2);
  });

  test('deep memory: pairs, a generation and a training followed as jobs, on only when it helps', async () => {
    const wes = client('wes');
    // Enough memories that some are held out for the evaluation (a fifth of them, by id).
    const people = ('Ada Bram Cleo Dev Esme Finn Gia Hal Ines Jude Kai Lea Milo Nia Oren Pia Quin ' +
      'Rui Sia Tom Uli Vera Wim Xia Yael Zed Alba Bo Cai Dita').split(' ');
    const things = ('violin kayak telescope sourdough chess pottery orchids fencing karate origami ' +
      'beekeeping archery juggling knitting climbing surfing baking rowing tango calligraphy ' +
      'sailing fishing cycling painting birding yoga pinball gardening carving poetry').split(' ');
    const pairs = [];
    for (const [i, name] of people.entries()) {
      const m = await wes.addMemory(`${name} spends every Sunday on ${things[i]}.`);
      pairs.push({ question: `What does ${name} do on Sundays?`, memoryId: m.id });
      pairs.push({ question: `Which hobby fills ${name}'s weekends?`, memoryId: m.id });
    }
    const before = await wes.deepMemoryStatus();
    assert.deepEqual([before.pairs, before.trained, before.enabled], [0, false, false]);
    assert.equal(before.memories, people.length);
    await rejects(wes.deepMemoryEnable(), 'BAD_INPUT');
    assert.equal(await wes.deepMemoryAddPairs(pairs), pairs.length);
    const xan = client('xan');
    await rejects(xan.deepMemoryAddPairs([{ question: 'Who?', memoryId: pairs[0].memoryId }]), 'NOT_FOUND');
    // The packaged chat model writes a question in a job.
    const generate = await wes.deepMemoryGenerate({ maxPairs: 1 });
    assert.equal(generate.kind, 'deep_memory_generate');
    const generated = (await collect(wes.jobProgress(generate.id))).at(-1);
    assert.equal(generated.status, 'succeeded', JSON.stringify(generated));
    assert.equal((await wes.deepMemoryStatus()).generatedPairs, generated.result.pairs);
    // A training, followed to its evaluation.
    const train = await wes.deepMemoryTrain({ epochs: 10 });
    assert.equal(train.kind, 'deep_memory_train');
    const trained = (await collect(wes.jobProgress(train.id))).at(-1);
    assert.equal(trained.status, 'succeeded', JSON.stringify(trained));
    const after = await wes.deepMemoryStatus();
    assert.deepEqual([after.trained, after.version, after.enabled], [true, 1, false]);
    const e = after.evaluation;
    assert.ok(e !== null && e.pairs > 0, JSON.stringify(after));
    for (const f of [e.before, e.after]) assert.ok(f.mrr >= 0 && f.recallAt10 <= 1, JSON.stringify(f));
    // It can be turned on only when it helps; off at once.
    if (e.helps) {
      const on = await wes.deepMemoryEnable();
      assert.deepEqual([on.enabled, on.active], [true, true]);
    } else {
      await rejects(wes.deepMemoryEnable(), 'BAD_INPUT');
    }
    assert.equal((await wes.deepMemoryDisable()).enabled, false);
    assert.equal((await xan.deepMemoryStatus()).trained, false);
  });

  test('bad input and bad credentials are typed errors', async () => {
    const erin = client('erin');
    await rejects(erin.search('x', { topK: -1 }), 'BAD_INPUT');
    await rejects(erin.addMessages('s', [{ role: 'user', content: '' }]), 'BAD_INPUT');
    await rejects(client(undefined).me(), 'UNAUTHENTICATED');
    await rejects(client(undefined, { token: 'a.b.c' }).me(), 'UNAUTHENTICATED');
    await rejects(collect(client(undefined, { token: 'a.b.c' }).chat('s', 'hi')), 'UNAUTHENTICATED');
  });

  test('getToken is asked before every request', async () => {
    let calls = 0;
    const dr = client(undefined, {
      getToken: async () => {
        calls += 1;
        return token('frank');
      },
    });
    await dr.me();
    await dr.me();
    assert.equal(calls, 2);
  });

  test('a user sees none of another user\'s data', async () => {
    const grace = client('grace');
    await grace.addMessages('secret', [{ role: 'user', content: 'The safe code is 4711.' }]);
    const heidi = client('heidi');
    const hits = await heidi.search('safe code');
    assert.ok(!hits.some((h) => h.memory.content.includes('4711')));
    assert.deepEqual(await collect(heidi.sessions()), []);
    assert.deepEqual(await collect(heidi.messages('secret')), []);
  });

  test('chat streams deltas, then the whole result with the memories it used', async () => {
    const ivan = client('ivan');
    await ivan.addMemory('Ivan has a dog named Biscuit.');
    const chunks = await collect(ivan.chat('talk', 'What is my dog called?', { maxTokens: 12 }));
    const deltas = chunks.filter((c) => 'delta' in c).map((c) => c.delta);
    const final = chunks.at(-1);
    assert.ok(deltas.length >= 1, JSON.stringify(chunks));
    assert.equal(final.text, deltas.join(''));
    assert.ok(['stop', 'length'].includes(final.finishReason));
    assert.ok(final.usage.completionTokens >= 1);
    assert.ok(final.context.some((c) => c.content.includes('Biscuit')), JSON.stringify(final));
    assert.equal(final.context[0].kind, 'fact');
    // The turn is stored: the question and the answer.
    const stored = await collect(ivan.messages('talk'));
    assert.deepEqual(stored.map((m) => m.role), ['user', 'assistant']);
  });

  test('leaving a chat early stops it, and the client goes on working', async () => {
    const judy = client('judy');
    let seen = 0;
    for await (const chunk of judy.chat('early', 'Tell me a long story.', { maxTokens: 64 })) {
      assert.ok('delta' in chunk);
      seen += 1;
      if (seen === 2) break;
    }
    assert.equal(seen, 2);
    const controller = new AbortController();
    const aborted = [];
    for await (const chunk of judy.chat('early', 'Another story.', {
      maxTokens: 64,
      signal: controller.signal,
    })) {
      aborted.push(chunk);
      controller.abort();
    }
    assert.equal(aborted.length, 1);
    const again = await collect(judy.chat('early', 'Hello?', { maxTokens: 4 }));
    assert.ok('text' in again.at(-1));
  });

  test('memory events arrive as memories are added', async () => {
    const ken = client('ken');
    const events = ken.memoryEvents()[Symbol.asyncIterator]();
    const first = events.next();
    // The subscription starts on the first `next`; add until its event arrives.
    let got;
    for (let i = 0; i < 40 && got === undefined; i++) {
      await ken.addMemory(`Ken note ${i}`);
      got = await Promise.race([first, new Promise((r) => setTimeout(() => r(undefined), 250))]);
    }
    assert.ok(got, 'an event arrived');
    assert.equal(got.value.action, 'added');
    assert.equal(got.value.kind, 'fact');
    await events.return();
  });

  test('export and delete my data', async () => {
    const leo = client('leo');
    await leo.addMessages('s', [{ role: 'user', content: 'Leo collects stamps.' }]);
    const exported = await leo.exportMyData();
    assert.match(JSON.stringify(exported), /Leo collects stamps/);
    const report = await leo.deleteMyData();
    assert.equal(report.existed, true);
    assert.equal(report.messages, 1);
    assert.deepEqual([report.memories, report.embeddings, report.summaries], [1, 1, 0]);
    assert.deepEqual(await collect(leo.memories()), []);
  });
});

describe('retries', () => {
  /** A server that answers from `script` in turn (the last one repeats), counting requests. */
  async function fake(script) {
    let n = 0;
    const http = createServer((req, res) => {
      const step = script[Math.min(n, script.length - 1)];
      n += 1;
      req.resume();
      req.on('end', () => step(res));
    });
    await new Promise((r) => http.listen(0, '127.0.0.1', r));
    return {
      url: `http://127.0.0.1:${http.address().port}`,
      count: () => n,
      close: () => new Promise((r) => http.close(r)),
    };
  }
  const unavailable = (res) => {
    res.writeHead(503, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ data: null, errors: [{ message: 'busy', extensions: { code: 'UNAVAILABLE' } }] }));
  };
  const ok = (res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ data: { me: { id: 'x', admin: false, createdAt: null, memoryCount: 0 } } }));
  };
  const drop = (res) => res.socket.destroy();

  test('a query is retried past UNAVAILABLE and network errors', async () => {
    const f = await fake([unavailable, drop, ok]);
    try {
      const me = await new DeepRecall({ url: f.url, token: 't', retryDelayMs: 5 }).me();
      assert.equal(me.id, 'x');
      assert.equal(f.count(), 3);
    } finally {
      await f.close();
    }
  });

  test('retries end, with the last error', async () => {
    const f = await fake([unavailable]);
    try {
      await rejects(new DeepRecall({ url: f.url, retries: 2, retryDelayMs: 5 }).me(), 'UNAVAILABLE');
      assert.equal(f.count(), 3);
    } finally {
      await f.close();
    }
  });

  test('a proxy\'s error page is a network error: a query retries, a mutation does not', async () => {
    const gateway = (res) => {
      res.writeHead(502, { 'content-type': 'text/html' });
      res.end('<html><body>502 Bad Gateway</body></html>');
    };
    let f = await fake([gateway, ok]);
    try {
      await rejects(new DeepRecall({ url: f.url, retryDelayMs: 5 }).deleteMemory('1'), 'NETWORK');
      assert.equal(f.count(), 1, 'the write may have happened: not sent again');
    } finally {
      await f.close();
    }
    f = await fake([gateway, ok]);
    try {
      assert.equal((await new DeepRecall({ url: f.url, retryDelayMs: 5 }).me()).id, 'x');
      assert.equal(f.count(), 2);
    } finally {
      await f.close();
    }
  });

  test('a request that gets no answer ends at its timeout', async () => {
    const silent = () => {};
    const f = await fake([silent]);
    try {
      const started = Date.now();
      await rejects(
        new DeepRecall({ url: f.url, timeoutMs: 300, retries: 0 }).addMemory('a fact'),
        'NETWORK',
      );
      assert.ok(Date.now() - started < 5_000);
      assert.equal(f.count(), 1);
    } finally {
      f.close();
    }
  });

  test('a server timeout retries a query, never a mutation', async () => {
    const timeout = (res) => {
      res.writeHead(504, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ data: null, errors: [{ message: 'cut off', extensions: { code: 'TIMEOUT' } }] }));
    };
    let f = await fake([timeout, ok]);
    try {
      await rejects(new DeepRecall({ url: f.url, retryDelayMs: 5 }).deleteMemory('1'), 'TIMEOUT');
      assert.equal(f.count(), 1, 'the write may have been kept: not sent again');
    } finally {
      await f.close();
    }
    f = await fake([timeout, ok]);
    try {
      assert.equal((await new DeepRecall({ url: f.url, retryDelayMs: 5 }).me()).id, 'x');
      assert.equal(f.count(), 2);
    } finally {
      await f.close();
    }
  });

  test('a mutation is not retried after a network error', async () => {
    const f = await fake([drop, ok]);
    try {
      await rejects(new DeepRecall({ url: f.url, retryDelayMs: 5 }).deleteMemory('1'), 'NETWORK');
      assert.equal(f.count(), 1);
    } finally {
      await f.close();
    }
  });

  test('a 413 without GraphQL is BAD_INPUT, not retried; a proxy\'s 429 is RATE_LIMITED, waited out', async () => {
    // The server's body limit answers plain text: the caller's to act on, not an outage.
    const tooLarge = (res) => {
      res.writeHead(413, { 'content-type': 'text/plain' });
      res.end('length limit exceeded');
    };
    let f = await fake([tooLarge, ok]);
    try {
      await assert.rejects(new DeepRecall({ url: f.url, retryDelayMs: 5 }).me(), (e) => {
        assert.deepEqual([e.code, e.status], ['BAD_INPUT', 413], e.message);
        return true;
      });
      assert.equal(f.count(), 1, 'not sent again');
    } finally {
      await f.close();
    }
    // A proxy's rate limit: the request was never run, so even a mutation is sent again, after
    // the wait its Retry-After names (seconds here).
    const limited = (retryAfter) => (res) => {
      res.writeHead(429, { 'content-type': 'text/html', 'retry-after': retryAfter });
      res.end('<html><body>429 Too Many Requests</body></html>');
    };
    const deleted = (res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ data: { deleteMemory: true } }));
    };
    f = await fake([limited('1'), deleted]);
    try {
      const started = Date.now();
      assert.equal(await new DeepRecall({ url: f.url, retryDelayMs: 5 }).deleteMemory('1'), true);
      assert.ok(Date.now() - started >= 950, `waited ${Date.now() - started} ms`);
      assert.equal(f.count(), 2);
    } finally {
      await f.close();
    }
    // Or an HTTP date.
    f = await fake([limited(new Date(Date.now() + 5_000).toUTCString())]);
    try {
      await assert.rejects(new DeepRecall({ url: f.url, retries: 0 }).me(), (e) => {
        assert.deepEqual([e.code, e.status], ['RATE_LIMITED', 429], e.message);
        assert.ok(e.retryAfter > 3 && e.retryAfter <= 5, String(e.retryAfter));
        return true;
      });
    } finally {
      await f.close();
    }
  });
});

describe('subscriptions against a scripted server', () => {
  const event = {
    memoryEvents: { action: 'ADDED', memoryId: 'm1', kind: 'FACT', memory: null },
  };

  /**
   * A graphql-ws server that runs `script(ws, init)` for each connection once its
   * `connection_init` (`init`) arrives; `sockets` lists them all, in order.
   */
  async function scripted(script) {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    const sockets = [];
    wss.on('connection', (ws) => {
      sockets.push(ws);
      ws.once('message', (raw) => script(ws, JSON.parse(String(raw))));
    });
    await new Promise((r) => wss.once('listening', r));
    return {
      url: `http://127.0.0.1:${wss.address().port}`,
      sockets,
      close: () => {
        for (const ws of wss.clients) ws.terminate();
        return new Promise((r) => wss.close(r));
      },
    };
  }

  /** Acknowledges the connection and answers each subscription with an event, and `push`. */
  function answers(inits) {
    return (ws, init) => {
      inits.push(init.payload);
      ws.subscriptions = [];
      ws.push = () => {
        for (const id of ws.subscriptions) {
          ws.send(JSON.stringify({ id, type: 'next', payload: { data: event } }));
        }
      };
      ws.on('message', (raw) => {
        const message = JSON.parse(String(raw));
        if (message.type !== 'subscribe') return;
        ws.subscriptions.push(message.id);
        ws.send(JSON.stringify({ id: message.id, type: 'next', payload: { data: event } }));
      });
      ws.send(JSON.stringify({ type: 'connection_ack' }));
    };
  }

  const closed = (ws) =>
    ws.readyState === WebSocket.CLOSED ? Promise.resolve() : new Promise((r) => ws.once('close', r));

  test('a refreshed token opens a socket of its own; the old one closes with its last subscription', async () => {
    const inits = [];
    const s = await scripted(answers(inits));
    let current = 'one';
    const dr = new DeepRecall({ url: s.url, getToken: () => current, webSocketImpl: WebSocket });
    try {
      const first = dr.memoryEvents()[Symbol.asyncIterator]();
      assert.equal((await first.next()).value.action, 'added');
      // The token is refreshed: the socket opened with the old one ends when it expires, so
      // new subscriptions (a chat, say) do not join it.
      current = 'two';
      const second = dr.memoryEvents()[Symbol.asyncIterator]();
      assert.equal((await second.next()).value.action, 'added');
      const again = dr.memoryEvents()[Symbol.asyncIterator]();
      assert.equal((await again.next()).value.action, 'added');
      assert.deepEqual(inits, [{ Authorization: 'Bearer one' }, { Authorization: 'Bearer two' }]);
      // The old token expires: the server closes its socket, and only the stream on it ends.
      const [old, fresh] = s.sockets;
      old.close(4403, 'UNAUTHENTICATED: the token expired');
      await rejects(first.next(), 'UNAUTHENTICATED');
      fresh.push();
      assert.equal((await second.next()).value.action, 'added');
      assert.equal((await again.next()).value.action, 'added');
      // The new socket closes with its last subscription.
      await second.return();
      assert.equal(fresh.readyState, WebSocket.OPEN, 'one subscription is left on it');
      await again.return();
      await closed(fresh);
      assert.equal(s.sockets.length, 2);
    } finally {
      await dr.close();
      await s.close();
    }
  });

  test('a socket refused for a rate limit carries the wait its reason names', async () => {
    for (const [code, reason, wait] of [
      [1002, 'RATE_LIMITED: too many requests from this address; retry in 2.5s', 2.5],
      [4429, 'too many connections (retry in 1s)', 1],
    ]) {
      const s = await scripted((ws) => ws.close(code, reason));
      const dr = new DeepRecall({ url: s.url, token: 't', webSocketImpl: WebSocket });
      try {
        await assert.rejects(dr.memoryEvents().next(), (e) => {
          assert.ok(e instanceof DeepRecallError, `a DeepRecallError, not ${e}`);
          assert.deepEqual([e.code, e.retryAfter], ['RATE_LIMITED', wait], e.message);
          return true;
        });
      } finally {
        await dr.close();
        await s.close();
      }
    }
  });
});

test('the CommonJS build loads with require', () => {
  const require = createRequire(import.meta.url);
  const cjs = require('../dist/cjs/index.js');
  assert.equal(typeof cjs.DeepRecall, 'function');
  assert.equal(new cjs.DeepRecallError('NOT_FOUND', 'x').code, 'NOT_FOUND');
});
