// The package as a Node program uses it (pkg/node, plain JavaScript objects): memories with a
// session, tags, metadata and an expiry, narrowed by a search's filter; one memory superseding
// another, found as of a time and through its history; expired memories never found; bad
// options refused with a code. The embedding model is the real one (DEEP_RECALL_MODELS_DIR).
import assert from 'node:assert/strict'
import { existsSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const pkgRoot = path.resolve(here, '..')
const models = process.env.DEEP_RECALL_MODELS_DIR || path.resolve(pkgRoot, '../../models')
const pkg = path.join(pkgRoot, 'pkg/node/recall_wasm.js')
assert.ok(existsSync(pkg), 'run `npm run build` first')
const { Embedder, MemoryIndex, PromptBuilder } = createRequire(import.meta.url)(pkg)

const dir = path.join(models, 'all-MiniLM-L6-v2')
const embedder = new Embedder(
  readFileSync(path.join(dir, 'config.json'), 'utf8'),
  readFileSync(path.join(dir, 'tokenizer.json'), 'utf8'),
  new Uint8Array(readFileSync(path.join(dir, 'model.safetensors'))),
)
const day = 86_400_000
const now = Date.now()

function add(index, user, id, text, at, options) {
  index.add(user, id, text, embedder.embed(text), at, options)
}

function ids(index, user, query, filter) {
  return index
    .search(user, query, embedder.embed(query), 10, 'hybrid', filter)
    .map((h) => h.id)
    .sort((a, b) => a - b)
}

test('a filter narrows a search: session, tags, metadata operators, times', () => {
  const index = new MemoryIndex()
  add(index, 'ana', 1, 'Book the flights to Rome for June', now - 5 * day, {
    session: 'trip',
    tags: ['travel'],
    metadata: { priority: 1, city: 'Rome' },
  })
  add(index, 'ana', 2, 'Find a hotel near the Colosseum', now - 4 * day, {
    session: 'trip',
    tags: ['travel', 'todo'],
    metadata: { priority: 3, city: 'Rome' },
  })
  add(index, 'ana', 3, 'Finish the quarterly report before the trip', now - 3 * day, {
    session: 'work',
    tags: ['todo'],
    metadata: { priority: 5, due: '2030-01-15T00:00:00Z' },
  })
  // Another user's memory, the same words and every tag: never found for Ana.
  add(index, 'ben', 4, 'Book the flights to Rome for June', now, {
    session: 'trip',
    tags: ['travel', 'todo'],
    metadata: { priority: 3 },
  })
  const q = 'plans for the Rome trip'
  assert.deepEqual(ids(index, 'ana', q), [1, 2, 3])
  assert.deepEqual(ids(index, 'ana', q, { session: 'trip' }), [1, 2])
  assert.deepEqual(ids(index, 'ana', q, { tags: ['travel', 'todo'] }), [2])
  const where = (key, op, value) => ({ metadata: [{ key, op, value }] })
  assert.deepEqual(ids(index, 'ana', q, where('priority', 'gte', 3)), [2, 3])
  assert.deepEqual(ids(index, 'ana', q, where('priority', 'in', [1, 5])), [1, 3])
  assert.deepEqual(ids(index, 'ana', q, where('due', 'exists', true)), [3])
  assert.deepEqual(ids(index, 'ana', q, where('due', 'lt', '2030-02-01T00:00:00Z')), [3])
  assert.deepEqual(ids(index, 'ana', q, { sinceMs: now - 4 * day }), [2, 3])
  assert.deepEqual(ids(index, 'ana', q, { untilMs: now - 4 * day }), [1])
  assert.deepEqual(ids(index, 'ben', q, { tags: ['todo'] }), [4])
  const [hit] = index.search('ana', q, embedder.embed(q), 1, 'hybrid', { session: 'work' })
  assert.equal(hit.session, 'work')
  assert.deepEqual(hit.tags, ['todo'])
  assert.equal(hit.metadata.priority, 5)
  assert.equal(hit.createdAtMs, now - 3 * day)
  // Bad options are errors with a code, and change nothing.
  const code = (f) => {
    try {
      f()
    } catch (e) {
      return e.code
    }
    return 'no error'
  }
  const v = embedder.embed(q)
  const search = (filter) => () => index.search('ana', q, v, 5, 'hybrid', filter)
  assert.equal(code(search(where('priority', 'near', 1))), 'INVALID_INPUT')
  assert.equal(code(search(where('priority', 'gt', 'high'))), 'INVALID_INPUT')
  assert.equal(code(search({ sesion: 'trip' })), 'INVALID_INPUT', 'a misspelt field')
  assert.equal(code(() => index.add('ana', 5, 'x', v, now, { metadata: [1, 2] })), 'INVALID_INPUT')
  assert.equal(code(() => index.add('ana', 5.5, 'x', v, now)), 'INVALID_INPUT')
  assert.equal(code(() => index.add('ana', 5, 'x', v, NaN)), 'INVALID_INPUT')
  assert.equal(index.count('ana'), 3)
})

test('memories supersede, expire and keep their history; saved and loaded with it', async () => {
  const index = new MemoryIndex()
  add(index, 'ana', 1, 'I live in Porto', now - 10 * day)
  add(index, 'ana', 2, 'I moved to Lisbon', now - 2 * day, { supersedes: 1 })
  const q = 'Where do I live?'
  assert.deepEqual(ids(index, 'ana', q), [2], 'the current one')
  assert.deepEqual(ids(index, 'ana', q, { asOfMs: now - 5 * day }), [1], 'what was true then')
  assert.deepEqual(ids(index, 'ana', q, { includeSuperseded: true }), [1, 2])
  const old = index.get('ana', 1)
  assert.equal(old.supersededBy, 2)
  assert.equal(old.supersededAtMs, now - 2 * day)
  assert.deepEqual(index.history('ana', 2).map((m) => m.id), [1, 2])
  assert.equal(index.get('ana', 99), undefined)
  assert.equal(index.get('ben', 1), undefined, 'another user has none')
  let err
  try {
    add(index, 'ana', 3, 'I moved to Madrid', now, { supersedes: 1 })
  } catch (e) {
    err = e
  }
  assert.equal(err.code, 'INVALID_INPUT', 'only the current one can be superseded')
  assert.match(err.message, /already superseded by memory 2/)
  assert.throws(() => add(index, 'ben', 3, 'x', now, { supersedes: 2 }), { code: 'NOT_FOUND' })

  // Expiry: a memory is found until its time, then never (a real clock: it expires a second
  // after it is added, the embeddings made before); an expiry in the past is refused.
  add(index, 'ana', 4, 'The door code is 4417', now - day)
  const text = 'The guest wifi password is tulip'
  const wifi = 'What is the wifi password?'
  const [v, qv] = [embedder.embed(text), embedder.embed(wifi)]
  const born = Date.now()
  index.add('ana', 5, text, v, born, { expiresAtMs: born + 1000 })
  const found = index.search('ana', wifi, qv, 10).map((h) => h.id)
  assert.ok(found.includes(5), `found before it expires: ${found}`)
  assert.throws(() => add(index, 'ana', 6, 'x', now, { expiresAtMs: now - day }), {
    code: 'INVALID_INPUT',
  })
  await new Promise((resolve) => setTimeout(resolve, born + 1100 - Date.now()))
  assert.deepEqual(ids(index, 'ana', wifi), [2, 4], 'the expired one is never found')
  assert.deepEqual(ids(index, 'ana', wifi, { asOfMs: born + 100 }), [2, 4, 5], 'as of then')
  assert.deepEqual(ids(index, 'ana', wifi, { asOfMs: now - 5 * day }), [1], 'and before')

  const back = MemoryIndex.fromBytes(index.toBytes())
  assert.deepEqual(ids(back, 'ana', q, { includeSuperseded: true }), [1, 2, 4])
  assert.deepEqual(back.history('ana', 1).map((m) => m.id), [1, 2])
  assert.equal(back.purgeExpired(), 1)
  assert.equal(back.get('ana', 5), undefined)
  // Removing the newer memory makes the older one current again.
  assert.equal(back.remove('ana', 2), true)
  assert.equal(back.get('ana', 1).supersededBy, null)
  assert.deepEqual(ids(back, 'ana', q), [1, 4])
})

test('the prompt for a reply: the user\'s memories and the conversation, within the chat model\'s budget', () => {
  const index = new MemoryIndex()
  add(index, 'ana', 1, 'My cat is called Biscuit', now - 3 * day)
  add(index, 'ana', 2, 'I work as a nurse in Porto', now - 2 * day)
  add(index, 'ben', 3, 'My cat is called Shadow', now - day)
  // Counted with a model's own tokenizer (a page passes its chat model's tokenizer.json; here
  // the embedder's, the one at hand).
  const tokenizer = readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')
  const prompts = new PromptBuilder(tokenizer)
  const message = 'What is my cat called?'
  const built = prompts.build(index, 'ana', message, embedder.embed(message), {
    system: 'You are a kind assistant.',
    conversation: [
      { role: 'user', content: 'Hi!' },
      { role: 'assistant', content: 'Hello! How can I help?' },
    ],
    topK: 2,
    budget: { contextWindow: 2048, responseReserve: 256 },
  })
  assert.deepEqual(
    built.messages.map((m) => m.role),
    ['system', 'user', 'assistant', 'user'],
  )
  const system = built.messages[0].content
  assert.ok(system.startsWith('You are a kind assistant.'), system)
  assert.ok(system.includes('My cat is called Biscuit'), system)
  assert.ok(!system.includes('Shadow'), `another user's memory: ${system}`)
  assert.equal(built.messages[3].content, message)
  assert.equal(built.memories[0].id, 1)
  assert.ok(built.report.memories.included.includes(1))
  assert.ok(built.report.used <= built.report.budget)
  assert.equal(built.report.budget, 2048 - 256)
  assert.equal(built.report.messageTokens, prompts.count(message))
  // The tokenizer's count (what / is / my / cat / called / ?), or without one a token per
  // four bytes.
  assert.equal(prompts.count(message), 6)
  assert.equal(new PromptBuilder().count('Biscuit is a cat'), 4)

  // A small window keeps the message and drops what does not fit.
  const tight = prompts.build(index, 'ana', message, embedder.embed(message), {
    conversation: Array.from({ length: 30 }, (_, i) => ({
      role: i % 2 ? 'assistant' : 'user',
      content: `Turn ${i} of a long chat about nothing in particular at all.`,
    })),
    budget: { contextWindow: 200, responseReserve: 50 },
  })
  assert.ok(tight.report.used <= 150, JSON.stringify(tight.report))
  assert.ok(tight.report.history.dropped.length > 0)
  assert.equal(tight.messages.at(-1).content, message)

  // Bad input is refused with a code.
  for (const options of [
    { conversation: [{ role: 'tool', content: 'x' }] },
    { budget: { contextWindow: 100, responseReserve: 200 } },
    { budget: { window: 100 } },
    { topK: 2, extra: true },
  ]) {
    assert.throws(() => prompts.build(index, 'ana', message, embedder.embed(message), options), {
      code: 'INVALID_INPUT',
    }, JSON.stringify(options))
  }
  assert.throws(() => new PromptBuilder('not a tokenizer'), { code: 'INVALID_INPUT' })
})
