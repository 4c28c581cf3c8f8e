// The Node package against the embedded store and Postgres (DATABASE_URL), over the models in
// DEEP_RECALL_MODELS_DIR (scripts/test.sh sets both): isolation, the reference cosine, export
// and forget, errors with stable codes, memory keys, streaming chat, and calls in flight
// together.
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { after, describe, test } from 'node:test'
import { fileURLToPath } from 'node:url'

import {
  DeepRecallError,
  InvalidInputError,
  Memory,
  ModelError,
  NotFoundError,
  UnavailableError,
} from '../index.mjs'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..')
const modelsDir = process.env.DEEP_RECALL_MODELS_DIR || path.join(root, 'models')
// Every data directory a test opens, removed once the file's tests are done.
const tempDirs = []
const tempDir = () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'deep-recall-node-'))
  tempDirs.push(dir)
  return dir
}
after(() => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true })
})

const stores = [
  ['embedded', (extra = {}) => Memory.open({ dataDir: tempDir(), modelsDir, device: 'cpu', ...extra })],
]
if (process.env.DATABASE_URL) {
  stores.push([
    'postgres',
    (extra = {}) =>
      Memory.open({ databaseUrl: process.env.DATABASE_URL, modelsDir, device: 'cpu', ...extra }),
  ])
} else {
  test('postgres', { skip: 'DATABASE_URL is not set (scripts/test.sh starts a Postgres)' })
}

for (const [kind, open] of stores) {
  describe(`on the ${kind} store`, () => {
    const prefix = `node-${randomUUID().slice(0, 8)}-`
    const users = []
    const user = (name) => {
      users.push(prefix + name)
      return prefix + name
    }
    let memory
    const get = async () => (memory ??= await open())
    after(async () => {
      for (const u of users) {
        await (await get()).forget(u)
      }
    })

    test('users are isolated; export and forget', async () => {
      const m = await get()
      const alice = user('alice')
      const bob = user('bob')
      const ids = await m.addMessages(alice, 'trip', [
        { role: 'user', content: 'I moved to Lisbon in May.', tags: ['home'] },
        { role: 'assistant', content: 'Lisbon is lovely in spring.' },
      ])
      assert.equal(ids.length, 2)
      assert.ok(ids[0] < ids[1])
      await m.addMessages(bob, 'trip', [
        { role: 'user', content: 'Bob keeps his savings in a Lisbon bank.' },
      ])
      for (const mode of ['hybrid', 'vector', 'text']) {
        const hits = await m.search(alice, 'Lisbon savings bank', { mode })
        assert.ok(hits.length > 0, mode)
        assert.ok(!hits.some((h) => h.content.includes('Bob')), mode)
        assert.ok(hits.every((h) => h.session === 'trip' && h.createdAt instanceof Date))
      }
      assert.deepEqual(await m.search(alice, 'Lisbon', { session: 'elsewhere' }), [])
      const exported = await m.export(alice)
      assert.equal(exported.user.id, alice)
      assert.deepEqual(
        exported.messages.map((x) => x.content),
        ['I moved to Lisbon in May.', 'Lisbon is lovely in spring.'],
      )
      assert.ok(!JSON.stringify(exported).includes('savings'))
      const report = await m.forget(alice)
      assert.equal(report.existed, true)
      assert.equal(report.messages, 2)
      assert.deepEqual(await m.search(alice, 'Lisbon'), [])
      await assert.rejects(m.export(alice), NotFoundError)
      assert.ok((await m.search(bob, 'Lisbon'))[0].content.startsWith('Bob'), 'Bob keeps his')
    })

    test('the reference cosine', async () => {
      const m = await get()
      const u = user('ref')
      await m.addMessages(u, 's', [{ role: 'user', content: 'A man is eating food.' }])
      const [hit] = await m.search(u, 'A man is eating a piece of bread.', { mode: 'vector' })
      assert.equal(hit.content, 'A man is eating food.')
      assert.ok(Math.abs(hit.score - 0.7553) < 1e-3, String(hit.score))
    })

    test('errors carry stable codes', async () => {
      const m = await get()
      const u = user('err')
      const cases = [
        () => m.addMessages(u, 's', [{ role: 'user', content: '' }]),
        () => m.addMessages(u, 's', [{ role: 'robot', content: 'hi' }]),
        () => m.addMessages(u, '', [{ role: 'user', content: 'hi' }]),
        () => m.addMessages(u, 's', [{ role: 'user', content: 'hi', ts: 'yesterday' }]),
        () => m.search(u, 'x', { mode: 'fuzzy' }),
        () => m.search(u, 'x', { topK: 0 }),
        () => m.search(u, ''),
        // Arguments of the wrong type, refused by the addon's conversion.
        () => m.setMemoryKeys(u, /** @type {any} */ ('yes')),
        () => m.addMessages(u, 's', /** @type {any} */ (undefined)),
      ]
      for (const c of cases) {
        await assert.rejects(c(), (err) => {
          assert.ok(err instanceof InvalidInputError, String(err))
          assert.ok(err instanceof DeepRecallError)
          assert.equal(err.code, 'INVALID_INPUT')
          return true
        })
      }
      await assert.rejects(m.export(u), (err) => err instanceof NotFoundError && err.code === 'NOT_FOUND')
      // `null` options are no options.
      assert.equal((await m.createSession(u, 'n', /** @type {any} */ (null))).id, 'n')
      assert.deepEqual(await m.search(u, 'hi'), [], 'nothing half-written')
    })

    test('a persona card becomes the session\'s persona memories', async () => {
      const m = await get()
      const alice = user('persona-alice')
      const bob = user('persona-bob')
      const ports = ['Cape Town', 'Hobart', 'Reykjavik', 'Dakar']
      const card =
        'You are Captain Rhea, a retired sea captain from Valparaiso.\n' +
        ports
          .map((p, i) => `In her ${i + 10}th year at sea Rhea anchored at ${p} and learnt the local knots.`)
          .join(' ') +
        '\nRhea rounded Cape Horn twelve times and never lost a sailor.'
      const s = await m.createSession(alice, 'voyage', { title: 'Voyage', persona: card })
      assert.deepEqual([s.id, s.title, s.persona], ['voyage', 'Voyage', card])
      assert.ok(s.createdAt instanceof Date)
      const q = 'How many times did the captain round Cape Horn?'
      const only = { topK: 10, filter: { kinds: ['persona'] } }
      const hits = await m.search(alice, q, only)
      assert.ok(hits.length >= 2, 'a long card comes as chunks')
      assert.ok(hits.every((h) => h.kind === 'persona' && h.content.length <= 400))
      assert.match(hits[0].content, /Cape Horn/)
      assert.deepEqual(await m.search(bob, q, only), [])
      // A title alone leaves the card; a new card replaces the chunks.
      assert.equal((await m.createSession(alice, 'voyage', { title: 'Renamed' })).persona, card)
      await m.createSession(alice, 'voyage', { persona: 'You are Moss, a quiet gardener.' })
      const now = (await m.search(alice, q, only)).map((h) => h.content)
      assert.deepEqual(now, ['You are Moss, a quiet gardener.'])
    })

    test('memories stay true: supersede, history, expiry, metadata conditions', async () => {
      const m = await get()
      const alice = user('true-alice')
      const bob = user('true-bob')
      const paris = await m.addMemory(alice, {
        content: 'Alice lives in Paris.',
        metadata: { topic: 'home' },
      })
      assert.equal(paris.kind, 'fact')
      assert.ok(paris.createdAt instanceof Date && paris.expiresAt === null)
      const berlin = await m.addMemory(alice, {
        content: 'Alice moved to Berlin.',
        supersedes: paris.id,
        metadata: { topic: 'home', priority: 3 },
      })
      assert.equal(berlin.supersedes, paris.id)
      const now = (await m.search(alice, 'Where does Alice live?')).map((h) => h.memoryId)
      assert.ok(now.includes(berlin.id) && !now.includes(paris.id), String(now))
      const history = await m.memoryHistory(alice, berlin.id)
      assert.deepEqual(history.map((x) => x.id), [paris.id, berlin.id])
      assert.equal(history[0].supersededBy, berlin.id)
      // A millisecond after Paris was stored (a Date holds milliseconds; the store keeps
      // microseconds): Paris, and nothing written later.
      const then = await m.search(alice, 'Where does Alice live?', {
        filter: { asOf: new Date(paris.createdAt.getTime() + 1) },
      })
      assert.deepEqual(then.map((h) => h.memoryId), [paris.id])
      // Listings, a page at a time: the current facts, or the history with them.
      const list = async (/** @type {AsyncIterable<any>} */ it) => {
        const out = []
        for await (const x of it) out.push(x)
        return out
      }
      assert.deepEqual((await list(m.memories(alice, { pageSize: 1 }))).map((x) => x.id), [berlin.id])
      const listed = await list(m.memories(alice, { filter: { includeSuperseded: true }, pageSize: 1 }))
      assert.deepEqual(listed.map((x) => x.id), [berlin.id, paris.id])
      assert.ok(listed[0].createdAt instanceof Date)
      assert.deepEqual(await list(m.memories(bob)), [])
      // A hit says where it stands in the history: the old fact names its replacement.
      const both = await m.search(alice, 'Where does Alice live?', {
        filter: { includeSuperseded: true },
      })
      const old = both.find((h) => h.memoryId === paris.id)
      const current = both.find((h) => h.memoryId === berlin.id)
      assert.ok(old && current, JSON.stringify(both))
      assert.equal(old.supersededBy, berlin.id)
      assert.ok(old.supersededAt instanceof Date)
      assert.equal(current.supersedes, paris.id)
      assert.equal(current.supersededBy, null)
      assert.equal(current.expiresAt, null)
      assert.equal(current.importance, berlin.importance)
      const high = await m.search(alice, 'Alice', {
        filter: { metadata: [{ key: 'priority', op: 'gte', value: 2 }] },
      })
      assert.deepEqual(high.map((h) => h.memoryId), [berlin.id])
      // A message's metadata is its memory's: conditions find it by what it came with.
      await m.addMessages(alice, 'chat', [
        { role: 'user', content: 'Alice parks at the station.', metadata: { channel: 'sms' } },
        { role: 'user', content: 'Alice parks in the garage.', metadata: { channel: 'email' } },
      ])
      const sms = await m.search(alice, 'Where does Alice park?', {
        filter: { metadata: [{ key: 'channel', op: 'eq', value: 'sms' }] },
      })
      assert.deepEqual(sms.map((h) => h.content), ['Alice parks at the station.'])
      assert.equal(sms[0].metadata.channel, 'sms')
      const email = await list(
        m.memories(alice, {
          filter: { kinds: ['message'], metadata: [{ key: 'channel', op: 'eq', value: 'email' }] },
        }),
      )
      assert.deepEqual(email.map((x) => x.content), ['Alice parks in the garage.'])
      const sessions = await list(m.sessions(alice, { pageSize: 1 }))
      assert.deepEqual(sessions.map((x) => x.id), ['chat'])
      assert.ok(sessions[0].updatedAt instanceof Date)
      assert.deepEqual(await list(m.sessions(bob)), [])
      await assert.rejects(list(m.memories(alice, { pageSize: 0 })), InvalidInputError)
      const brief = await m.addMemory(alice, { content: 'Parking spot B12.', ttlSeconds: 3600 })
      assert.ok(brief.expiresAt instanceof Date && brief.expiresAt > brief.createdAt)
      const spot = (await m.search(alice, 'Parking spot B12')).find((h) => h.memoryId === brief.id)
      assert.ok(spot?.expiresAt instanceof Date, JSON.stringify(spot))
      assert.equal(spot.expiresAt.getTime(), brief.expiresAt.getTime())
      for (const bad of [
        () => m.addMemory(alice, { content: 'x', ttlSeconds: 0 }),
        () => m.addMemory(alice, { content: 'x', ttl: 5 }),
        () => m.search(alice, 'x', { filter: { metadata: [{ key: 'p', op: 'bigger', value: 1 }] } }),
        () => m.search(alice, 'x', { filter: { asOff: new Date() } }),
      ]) {
        await assert.rejects(bad(), InvalidInputError)
      }
      // Ids and counts are whole numbers, options known ones: never cut, wrapped or ignored.
      for (const bad of [
        () => m.deleteMemories(alice, [berlin.id + 0.5]),
        () => m.deleteMemories(alice, [Number.NaN]),
        () => m.memoryHistory(alice, '5'),
        () => m.memoryHistory(alice, 2 ** 53),
        () => list(m.memories(alice, { pageSize: 2 ** 32 + 10 })),
        () => list(m.memories(alice, { page_size: 5 })),
        () => list(m.sessions(alice, { pageSize: 1.5 })),
        () => m.createSession(alice, 'chat', { titel: 'x' }),
        () => m.chat(alice, 'chat', 'hi', { max_tokens: 5 }),
      ]) {
        await assert.rejects(bad(), InvalidInputError)
      }
      assert.equal((await m.memoryHistory(alice, berlin.id)).length, 2, 'nothing was deleted')
      await assert.rejects(m.addMemory(bob, { content: 'takeover', supersedes: berlin.id }), NotFoundError)
      await assert.rejects(m.memoryHistory(bob, berlin.id), NotFoundError)
      assert.equal(await m.deleteMemories(alice, [berlin.id]), 1)
      const back = (await m.search(alice, 'Where does Alice live?')).map((h) => h.memoryId)
      assert.ok(back.includes(paris.id), String(back))
    })

    test('memory keys are written in the background, per user', async () => {
      const m = await open({ memoryKeysCheckSeconds: 1 })
      const u = user('keys')
      const other = user('keys-other')
      await m.addMessages(u, 'harbour', [
        { role: 'user', content: TURN },
        { role: 'assistant', content: REPLY },
      ])
      await m.addMessages(other, 'harbour', [{ role: 'user', content: TURN }])
      // Searchable at once by its own words; by the turn before once its key is written.
      assert.ok((await m.search(u, 'the project', { mode: 'text' })).some((h) => h.content === REPLY))
      const deadline = Date.now() + 60_000
      while (!(await textHits(m, u)).includes(REPLY) && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 200))
      }
      assert.deepEqual((await textHits(m, u)).sort(), [TURN, REPLY].sort())
      assert.deepEqual(await m.memoryKeys(u), { enabled: true, keys: 1 })
      assert.deepEqual(await textHits(m, other), [TURN], 'keys never cross users')
      assert.deepEqual(await m.setMemoryKeys(u, false), { enabled: false, keys: 0 })
      assert.deepEqual(await textHits(m, u), [TURN])
    })

    // Two Memory on one database (two processes, or one beside a server): the other's writes
    // and deletions drop this one's cached searches at once, not after the cache's minute.
    test('another process\'s writes are seen at once', { skip: kind === 'embedded' && 'one process\'s store' }, async () => {
      const writer = await get()
      const reader = await open({ memoryKeysCheckSeconds: 0 })
      const u = user('shared')
      await writer.addMessages(u, 'harbour', [{ role: 'user', content: TURN }])
      const found = async () =>
        (await reader.search(u, 'Tagus estuary', { mode: 'text' })).map((h) => h.content)
      assert.deepEqual(await found(), [TURN]) // and cached
      const more = 'The Tagus estuary is wide where it meets Lisbon.'
      await writer.addMessages(u, 'harbour', [{ role: 'user', content: more }])
      let deadline = Date.now() + 15_000
      while ((await found()).length < 2 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 100))
      }
      assert.deepEqual((await found()).sort(), [TURN, more].sort())
      await writer.forget(u)
      deadline = Date.now() + 15_000
      while ((await found()).length > 0 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 100))
      }
      assert.deepEqual(await found(), [], 'a forgotten user does not come back from the cache')
    })

    test('calls run together', async () => {
      const m = await get()
      const u = user('together')
      await m.addMessages(u, 's', [
        { role: 'user', content: 'My sister Ana is a marine biologist.' },
        { role: 'user', content: 'I play the cello on Sundays.' },
      ])
      let ticks = 0
      const timer = setInterval(() => ticks++, 1)
      const [a, b] = await Promise.all([
        m.search(u, 'What does my sister do?'),
        m.search(u, 'Which instrument do I play?'),
      ])
      clearInterval(timer)
      assert.ok(a[0].content.includes('marine biologist'))
      assert.ok(b[0].content.includes('cello'))
      assert.ok(ticks > 0, 'the event loop kept running while Rust worked')
    })
  })
}

const TURN = 'We took the ferry across the Tagus estuary to see the old shipyards.'
const REPLY = "Exactly, that's the project."

/** What a text search for the turn's words finds: the reply says none of them, so it comes
 * back only through its key (which holds the turn before it). */
async function textHits(m, user) {
  return (await m.search(user, 'Tagus estuary shipyards', { mode: 'text' })).map((h) => h.content)
}

test('memory keys written on demand, and off for new users', async () => {
  const turns = [
    { role: 'user', content: TURN },
    { role: 'assistant', content: REPLY },
  ]
  const m = await Memory.open({ dataDir: tempDir(), modelsDir, device: 'cpu', memoryKeysCheckSeconds: 0 })
  await m.addMessages('ana', 'harbour', turns)
  assert.deepEqual(await m.memoryKeys('ana'), { enabled: true, keys: 0 })
  assert.deepEqual(await textHits(m, 'ana'), [TURN])
  assert.equal(await m.writeMemoryKeys('ana'), 1)
  assert.ok((await textHits(m, 'ana')).includes(REPLY))
  assert.equal(await m.writeMemoryKeys('ana'), 0, 'nothing left to key')

  const off = await Memory.open({
    dataDir: tempDir(),
    modelsDir,
    device: 'cpu',
    memoryKeys: false,
    memoryKeysCheckSeconds: 1,
  })
  await off.addMessages('ben', 'harbour', turns)
  assert.deepEqual(await off.memoryKeys('ben'), { enabled: false, keys: 0 })
  await assert.rejects(off.writeMemoryKeys('ben'), InvalidInputError)
  await new Promise((resolve) => setTimeout(resolve, 2500))
  assert.deepEqual(await textHits(off, 'ben'), [TURN], 'no background keys while they are off')
  assert.equal((await off.setMemoryKeys('ben', true)).enabled, true)
  assert.equal(await off.writeMemoryKeys('ben'), 1)
  assert.ok((await textHits(off, 'ben')).includes(REPLY))
})

test('deduplication and tag TTLs are options', async () => {
  const m = await Memory.open({
    dataDir: tempDir(),
    modelsDir,
    device: 'cpu',
    dedupeSimilarity: 0.95,
    tagTtlSeconds: { scratch: 60 },
  })
  const first = await m.addMemory('u', { content: 'I am allergic to peanuts' })
  const again = await m.addMemory('u', { content: 'I am allergic to peanuts.' })
  assert.equal(again.id, first.id)
  assert.equal(again.metadata.merged, 1)
  const note = await m.addMemory('u', { content: 'Scratch: call the plumber', tags: ['scratch'] })
  assert.ok(note.expiresAt instanceof Date)
  assert.ok(note.expiresAt.getTime() - note.createdAt.getTime() <= 61_000)
  for (const bad of [{ dedupeSimilarity: 1.5 }, { tagTtlSeconds: { x: 0 } }]) {
    await assert.rejects(
      Memory.open({ dataDir: tempDir(), modelsDir, device: 'cpu', ...bad }),
      InvalidInputError,
    )
  }
})

test('missing models and an unreachable database', async () => {
  await assert.rejects(
    Memory.open({ dataDir: tempDir(), modelsDir: '/nonexistent/models' }),
    (err) => err instanceof ModelError && err.code === 'MODEL_ERROR',
  )
  await assert.rejects(
    Memory.open({ databaseUrl: 'postgres://nobody@127.0.0.1:9/none', modelsDir }),
    (err) => err instanceof UnavailableError && err.code === 'UNAVAILABLE',
  )
})

test('int8 embeddings find the same memory; an unknown precision is refused', async () => {
  const m = await Memory.open({ dataDir: tempDir(), modelsDir, device: 'cpu', embeddingPrecision: 'int8' })
  await m.addMessages('ines', 's', [
    { role: 'user', content: 'My dog Biscuit is a beagle.' },
    { role: 'user', content: 'I work night shifts at the hospital.' },
  ])
  const hits = await m.search('ines', 'What breed is my pet?', { topK: 1, mode: 'vector' })
  assert.deepEqual(
    hits.map((h) => h.content),
    ['My dog Biscuit is a beagle.'],
  )
  await assert.rejects(
    Memory.open({ dataDir: tempDir(), modelsDir, embeddingPrecision: 'int4' }),
    (err) => err instanceof InvalidInputError && /precision/.test(err.message),
  )
})

test('chat streams deltas, then the result', async () => {
  const m = await Memory.open({ dataDir: tempDir(), modelsDir, device: 'cpu' })
  await m.addMessages('maya', 'facts', [{ role: 'user', content: 'My favourite city is Paris.' }])
  const parts = []
  for await (const part of m.chatStream('maya', 'talk', 'What is the capital of France?', {
    maxTokens: 24,
  })) {
    parts.push(part)
  }
  const last = parts.pop()
  assert.equal(last.done, true)
  const text = parts.map((p) => p.delta).join('')
  assert.ok(parts.length > 0)
  assert.equal(last.result.text, text)
  assert.ok(text.includes('Paris'), text)
  const usage = last.result.usage
  assert.equal(usage.totalTokens, usage.promptTokens + usage.completionTokens)
  assert.ok(last.result.context.some((h) => h.content.includes('Paris')))
  assert.ok(last.result.context.every((h) => typeof h.metadata === 'object' && h.metadata !== null))
  const whole = await m.chat('maya', 'talk2', 'Say hello.', { maxTokens: 6, temperature: 0, seed: 7 })
  assert.ok(whole.usage.completionTokens <= 6)
  assert.ok(['stop', 'length'].includes(whole.finishReason))
  await assert.rejects(m.chat('maya', 'x', 'hi', { maxTokens: 0 }), InvalidInputError)
  await assert.rejects(m.chat('maya', 'x', 'hi', { temperature: 9 }), InvalidInputError)
  // How many memories reach the prompt, and how they are found.
  await m.addMemory('maya', { content: 'My sister lives in Lyon and plays the cello.' })
  await m.addMemory('maya', { content: "My sister's cello teacher is from Lyon." })
  const ask = 'Where does my sister live?'
  const one = await m.chat('maya', 'talk3', ask, { maxTokens: 2, memoryTopK: 1 })
  assert.equal(one.context.length, 1, JSON.stringify(one.context))
  assert.ok(one.context[0].content.includes('Lyon'))
  const wide = await m.chat('maya', 'talk5', ask, { maxTokens: 2, topK: 5 })
  assert.ok(wide.context.length >= 2, JSON.stringify(wide.context))
  const odd = 'Qwertyuiop zxcvbnm?'
  assert.deepEqual((await m.chat('maya', 'talk4', odd, { maxTokens: 2, mode: 'text' })).context, [])
  assert.ok((await m.chat('maya', 'talk4', odd, { maxTokens: 2, mode: 'vector' })).context.length > 0)
  for (const bad of [{ memoryTopK: 0 }, { mode: 'sideways' }, { topK: 0 }]) {
    await assert.rejects(m.chat('maya', 'x', 'hi', /** @type {any} */ (bad)), InvalidInputError)
  }
  // Leaving a stream early stops it: the user message is kept, no half answer.
  for await (const part of m.chatStream('maya', 'cut', 'Tell me a long story about the sea.', {
    maxTokens: 200,
  })) {
    assert.ok(part.delta !== undefined)
    break
  }
  await new Promise((r) => setTimeout(r, 500))
  const roles = (await m.export('maya')).messages.filter((x) => x.session === 'cut').map((x) => x.role)
  assert.deepEqual(roles, ['user'])
})

test('a closed Memory lets go, and refuses calls', async () => {
  const dir = tempDir()
  const m = await Memory.open({ dataDir: dir, modelsDir, device: 'cpu' })
  await m.addMemory('ivy', { content: 'Ivy grows tomatoes.' })
  await m.close()
  await assert.rejects(m.search('ivy', 'tomatoes'), (err) => err instanceof InvalidInputError && /closed/.test(err.message))
  await m.close()
  // What was stored stays stored.
  const again = await Memory.open({ dataDir: dir, modelsDir, device: 'cpu' })
  assert.ok((await again.search('ivy', 'What does Ivy grow?'))[0].content.includes('tomatoes'))
  await again.close()
})

test('the shared vectors', async () => {
  // The core's results on tests/vectors/retrieval.json, reproduced through the package.
  const { readFileSync } = await import('node:fs')
  const vectors = JSON.parse(readFileSync(path.join(root, 'tests/vectors/retrieval.json'), 'utf8'))
  const m = await Memory.open({ dataDir: tempDir(), modelsDir, device: 'cpu' })
  await m.addMessages('vectors', vectors.session, vectors.messages)
  for (const c of vectors.queries) {
    const hits = await m.search('vectors', c.query, { topK: c.top_k, mode: c.mode })
    assert.deepEqual(
      hits.map((h) => h.content),
      c.expected.map((e) => e.content),
      `${c.query} (${c.mode})`,
    )
    hits.forEach((h, i) => assert.ok(Math.abs(h.score - c.expected[i].score) < 1e-4, `${c.query} (${c.mode})`))
  }
})
