// @ts-check
/**
 * Deep Recall in-process for Node.js: long-term memory for open-source LLMs.
 *
 *     const { Memory } = require('deep-recall')
 *     const memory = await Memory.open({ dataDir: 'data', modelsDir: 'models' })
 *     await memory.addMessages('alice', 's1', [{ role: 'user', content: 'I moved to Lisbon.' }])
 *     const [hit] = await memory.search('alice', 'Where does she live?')
 *
 * The same engine as the `deep-recall` server (one Rust core). Every method is async and runs
 * off the JavaScript thread.
 * @module deep-recall
 */
'use strict'

const native = require('./native.js')

/**
 * Base class of Deep Recall's errors; `code` is stable.
 */
class DeepRecallError extends Error {
  /**
   * @param {string} message
   * @param {string} [code]
   */
  constructor(message, code = 'INTERNAL') {
    super(message)
    this.name = 'DeepRecallError'
    /** @type {string} */
    this.code = code
  }
}

/** The input was rejected; nothing was written. */
class InvalidInputError extends DeepRecallError {
  /** @param {string} message */
  constructor(message) {
    super(message, 'INVALID_INPUT')
    this.name = 'InvalidInputError'
  }
}

/** No such object for this user. */
class NotFoundError extends DeepRecallError {
  /** @param {string} message */
  constructor(message) {
    super(message, 'NOT_FOUND')
    this.name = 'NotFoundError'
  }
}

/** Model files are missing or broken. */
class ModelError extends DeepRecallError {
  /** @param {string} message */
  constructor(message) {
    super(message, 'MODEL_ERROR')
    this.name = 'ModelError'
  }
}

/** A backing service (database, model worker, remote provider) is down or overloaded. */
class UnavailableError extends DeepRecallError {
  /** @param {string} message */
  constructor(message) {
    super(message, 'UNAVAILABLE')
    this.name = 'UnavailableError'
  }
}

/** @type {Record<string, new (message: string) => DeepRecallError>} */
const BY_CODE = {
  INVALID_INPUT: InvalidInputError,
  NOT_FOUND: NotFoundError,
  MODEL_ERROR: ModelError,
  UNAVAILABLE: UnavailableError,
}

/**
 * The addon's error (`CODE|message`) as the matching class.
 * @param {unknown} err
 * @returns {Error}
 */
function lift(err) {
  if (!(err instanceof Error)) {
    return new DeepRecallError(String(err))
  }
  const m = /^([A-Z_]+)\|([\s\S]*)$/.exec(err.message)
  if (!m) {
    // The addon's own errors carry their code; the others are its arguments' conversion
    // (a string where a boolean goes, an array that is not one): the caller's input.
    return new InvalidInputError(err.message)
  }
  const Class = BY_CODE[m[1]]
  return Class ? new Class(m[2]) : new DeepRecallError(m[2], m[1])
}

/**
 * Runs a call of the addon, lifting its errors.
 * @template T
 * @param {() => Promise<T>} call
 * @returns {Promise<T>}
 */
async function run(call) {
  try {
    return await call()
  } catch (err) {
    throw lift(err)
  }
}

/**
 * @typedef {object} OpenOptions
 * @property {string} [dataDir] the embedded store's directory (`./data` by default)
 * @property {string} [databaseUrl] Postgres instead (`postgres://...`)
 * @property {string} [modelsDir] where the models are (`./models`; `deep-recall models fetch`)
 * @property {string} [device] `auto` (default), `cpu`, `cuda:N` or `metal:N`
 * @property {'f32' | 'int8'} [embeddingPrecision] the embedder's arithmetic on the CPU: `f32`
 *   (default) or `int8` (about twice as fast; cosine ≥ 0.99 to the F32 vectors)
 * @property {string} [chatModel] a local chat model (a .gguf file, a safetensors directory or
 *   a name under modelsDir); the packaged SmolLM2-135M-Instruct by default
 * @property {string} [chatUrl] a remote OpenAI-compatible provider instead (`http://.../v1`)
 * @property {string} [chatModelName] the model name the provider knows
 * @property {string} [chatApiKey] the provider's API key
 * @property {number} [dedupeSimilarity] `addMemory` merges a new fact into one of the user's
 *   at least this similar (0.95 for near-identical text) instead of storing it again
 * @property {Record<string, number>} [tagTtlSeconds] memories with one of these tags expire
 *   that many seconds after they are stored (`{ scratch: 86400 }`)
 * @property {boolean} [memoryKeys] new users get memory keys (true by default; see KeyStatus)
 * @property {number} [memoryKeysCheckSeconds] seconds between looks for users who wrote,
 *   whose new memories then get their keys in the background (60; 0: only `writeMemoryKeys`)
 */

/**
 * Whether a user's memory keys are on, and how many they have. A key is a second way to find
 * a memory (a turn with the turn before it and the reply that goes on with it, so that a
 * question about either finds it); searches return the memory, never the key.
 * @typedef {object} KeyStatus
 * @property {boolean} enabled
 * @property {number} keys
 */

/**
 * @typedef {object} Message
 * @property {'user' | 'assistant' | 'system'} role
 * @property {string} content
 * @property {string | Date} [ts] when it was written (now by default)
 * @property {string[]} [tags]
 * @property {Record<string, unknown>} [metadata]
 */

/**
 * @typedef {object} MetadataCondition
 * @property {string} key a dotted path into the metadata (`project`, `source.app`)
 * @property {'eq' | 'ne' | 'in' | 'gt' | 'gte' | 'lt' | 'lte' | 'contains' | 'exists'} op
 * @property {unknown} [value] any JSON (an array for `in`, a number or an ISO time for the
 *   comparisons, a boolean for `exists`)
 */

/**
 * @typedef {object} Filter
 * @property {string} [session]
 * @property {Array<'message' | 'fact' | 'persona' | 'summary' | 'key'>} [kinds]
 * @property {Array<'user' | 'assistant' | 'system'>} [roles]
 * @property {string[]} [tags] every one of these
 * @property {string | Date} [since] written at or after
 * @property {string | Date} [until] written before
 * @property {string | Date} [asOf] what was true then (written by then, neither superseded nor
 *   expired by then) instead of what is current
 * @property {boolean} [includeSuperseded] the replaced memories too
 * @property {MetadataCondition[]} [metadata] all must hold
 */

/**
 * @typedef {object} SearchOptions
 * @property {number} [topK] results (10)
 * @property {'hybrid' | 'vector' | 'text'} [mode] retrievers (`hybrid`: fused and re-ranked)
 * @property {string} [session] only this session
 * @property {Filter} [filter]
 */

/**
 * @typedef {object} NewMemory
 * @property {string} content
 * @property {'fact' | 'persona' | 'message' | 'summary'} [kind] `fact` by default
 * @property {string} [session]
 * @property {string[]} [tags]
 * @property {number} [importance] in [0, 1] (estimated when absent)
 * @property {Record<string, unknown>} [metadata] for metadata conditions
 * @property {string | Date} [expiresAt] when it stops being returned (then purged)
 * @property {number} [ttlSeconds] or: expires this long after it is stored
 * @property {number} [supersedes] a current memory this one replaces (kept as history)
 */

/**
 * @typedef {object} StoredMemory
 * @property {number} id
 * @property {string} kind
 * @property {string} content
 * @property {string | null} session
 * @property {string | null} role
 * @property {string[]} tags
 * @property {Record<string, unknown>} metadata
 * @property {number} importance
 * @property {Date} createdAt
 * @property {Date | null} expiresAt
 * @property {number | null} supersedes the memory it replaced
 * @property {number | null} supersededBy the memory that replaced it
 * @property {Date | null} supersededAt
 * @property {number | null} keyFor for a key (kind `key`): the memory it is for
 */

/**
 * @typedef {object} Session
 * @property {string} id
 * @property {string | null} title
 * @property {string | null} persona the card: who the assistant is in this conversation
 * @property {Date} createdAt
 * @property {Date} updatedAt
 */

/**
 * @typedef {object} SessionOptions
 * @property {string} [title]
 * @property {string} [persona] a persona card, stored as the session's `persona` memories
 */

/**
 * @typedef {object} Hit
 * @property {number} memoryId
 * @property {string} content
 * @property {number} score higher is better
 * @property {string | null} session
 * @property {string | null} role
 * @property {string} kind `message`, `fact`, `persona`, `summary` or `key`
 * @property {Date} createdAt
 * @property {string[]} tags
 * @property {Record<string, unknown>} metadata what it was stored with, beside the engine's
 *   signals (`emotion_confidence`, `event_windows`)
 * @property {number} [importance] the rest are on search hits, not in a chat's context
 * @property {Date | null} [expiresAt] when it stops being returned (never when null)
 * @property {number | null} [supersedes] the memory it replaced
 * @property {number | null} [supersededBy] the memory that replaced it (a search with `asOf`
 *   or `includeSuperseded` returns such history)
 * @property {Date | null} [supersededAt]
 */

/**
 * @typedef {object} Usage
 * @property {number} promptTokens
 * @property {number} completionTokens
 * @property {number} totalTokens
 */

/**
 * @typedef {object} ChatResult
 * @property {string} text
 * @property {Hit[]} context the memories that went into the prompt
 * @property {Usage} usage
 * @property {'stop' | 'length' | 'cancelled'} finishReason
 * @property {number | null} confidence mean log-probability of the answer's tokens
 * @property {string} model
 * @property {string} session
 * @property {number} messageId
 * @property {number | null} replyId
 */

/**
 * @typedef {object} ChatOptions
 * @property {number} [maxTokens]
 * @property {number} [temperature]
 * @property {number} [topP]
 * @property {number} [topK] sample from this many likeliest tokens
 * @property {number} [seed]
 * @property {string[]} [stop]
 * @property {string} [system] a system prompt
 * @property {number} [memoryTopK] memories retrieved for the prompt (10 by default)
 * @property {'hybrid' | 'vector' | 'text'} [mode] how they are retrieved (hybrid by default)
 */

/**
 * @param {any} h
 * @returns {Hit}
 */
function toHit(h) {
  /** @type {Hit} */
  const hit = { ...h, createdAt: new Date(h.createdAt) }
  for (const key of /** @type {const} */ (['expiresAt', 'supersededAt'])) {
    if (key in h) hit[key] = h[key] === null ? null : new Date(h[key])
  }
  return hit
}

/**
 * @param {any} m
 * @returns {StoredMemory}
 */
function toMemory(m) {
  /** @param {string | null} t */
  const time = (t) => (t === null || t === undefined ? null : new Date(t))
  return {
    ...m,
    createdAt: new Date(m.createdAt),
    expiresAt: time(m.expiresAt),
    supersededAt: time(m.supersededAt),
  }
}

/**
 * @param {any} s
 * @returns {Session}
 */
function toSession(s) {
  return { ...s, createdAt: new Date(s.createdAt), updatedAt: new Date(s.updatedAt) }
}

/**
 * JSON with `Date`s as ISO times.
 * @param {unknown} value
 * @returns {string}
 */
function encode(value) {
  return JSON.stringify(value, function (key, v) {
    const raw = this[key]
    return raw instanceof Date ? raw.toISOString() : v
  })
}

/**
 * @param {string} json
 * @returns {ChatResult}
 */
function toResult(json) {
  const r = JSON.parse(json)
  return { ...r, context: r.context.map(toHit) }
}

/** The options `chat` and `chatStream` know. */
const CHAT_OPTIONS = [
  'maxTokens',
  'temperature',
  'topP',
  'topK',
  'seed',
  'stop',
  'system',
  'memoryTopK',
  'mode',
]

/**
 * Refuses an options object with a key the call does not know (a misspelt option would
 * otherwise be ignored without a word), as the addon refuses unknown fields of the others.
 * @template {object} T
 * @param {string} what
 * @param {T | null | undefined} options
 * @param {string[]} known
 * @returns {Partial<T>} the options (`{}` when none were given, `null` included)
 */
function onlyKnown(what, options, known) {
  if (options === undefined || options === null) {
    return {}
  }
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw new InvalidInputError(`${what} must be an object`)
  }
  const unknown = Object.keys(options).filter((k) => !known.includes(k))
  if (unknown.length > 0) {
    throw new InvalidInputError(
      `${what}: unknown option ${unknown.map((k) => JSON.stringify(k)).join(', ')} (known: ${known.join(', ')})`,
    )
  }
  return options
}

/**
 * A whole number that JavaScript holds exactly (ids, counts), checked before it reaches the
 * addon, whose conversion would cut a fraction or wrap a large count.
 * @param {string} what
 * @param {unknown} n
 * @param {number} [max]
 * @returns {number}
 */
function whole(what, n, max = Number.MAX_SAFE_INTEGER) {
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n > max) {
    throw new InvalidInputError(`${what} must be a whole number up to ${max}, not ${String(n)}`)
  }
  return n
}

/**
 * Core's chat request as JSON: what is not given keeps core's default.
 * @param {string} session
 * @param {string} message
 * @param {ChatOptions} options
 * @returns {string}
 */
function chatRequest(session, message, options) {
  const o = onlyKnown('chat options', options, CHAT_OPTIONS)
  const retrieve =
    o.memoryTopK === undefined && o.mode === undefined
      ? undefined
      : { top_k: o.memoryTopK, mode: o.mode }
  return JSON.stringify({
    session,
    message,
    generation: {
      max_tokens: o.maxTokens,
      temperature: o.temperature,
      top_p: o.topP,
      top_k: o.topK,
      seed: o.seed,
      stop: o.stop,
    },
    context:
      o.system === undefined && retrieve === undefined
        ? undefined
        : { system: o.system, retrieve },
  })
}

/** A user-scoped long-term memory over one store. */
class Memory {
  /**
   * @param {any} engine the addon's engine
   * @private
   */
  constructor(engine) {
    /** @private */
    this.engine = engine
  }

  /**
   * Opens the store and loads the embedding model.
   * @param {OpenOptions} [options]
   * @returns {Promise<Memory>}
   */
  static async open(options = {}) {
    const engine = await run(() => native.Engine.open(JSON.stringify(options)))
    return new Memory(engine)
  }

  /**
   * Lets go of the store's connections (a Postgres pool), the background key writer and the
   * chat model now, rather than when the object is collected; calls under way finish, later
   * ones throw `InvalidInputError`. Closing twice does nothing.
   * @returns {Promise<void>}
   */
  async close() {
    await run(() => this.engine.close())
  }

  /**
   * Stores messages (each also as a searchable memory), all or none; returns their ids.
   * @param {string} user
   * @param {string} session
   * @param {Message[]} messages
   * @returns {Promise<number[]>}
   */
  async addMessages(user, session, messages) {
    const json = JSON.stringify(messages, (key, value) =>
      key === 'ts' && value instanceof Date ? value.toISOString() : value,
    )
    return run(() => this.engine.addMessages(user, session, json))
  }

  /**
   * The user's memories that matter for `query`, best first.
   * @param {string} user
   * @param {string} query
   * @param {SearchOptions} [options]
   * @returns {Promise<Hit[]>}
   */
  async search(user, query, options = {}) {
    const json = await run(() => this.engine.search(user, query, encode(options)))
    return JSON.parse(json).map(toHit)
  }

  /**
   * Stores a memory (a fact by default); with `supersedes`, it replaces one of the user's
   * current memories, which is kept as history and no longer found.
   * @param {string} user
   * @param {NewMemory} memory
   * @returns {Promise<StoredMemory>}
   */
  async addMemory(user, memory) {
    return toMemory(JSON.parse(await run(() => this.engine.addMemory(user, encode(memory)))))
  }

  /**
   * Creates the session if needed and sets what is given: its title, and its persona card
   * (who the assistant is: a name, a manner, a backstory). The card is stored as the
   * session's `persona` memories, chunked by sentences and replacing those of the card
   * before; a chat in the session carries the card whole when it fits its share of the
   * prompt, else its opening and the chunks that matter for the message.
   * @param {string} user
   * @param {string} session
   * @param {SessionOptions} [options]
   * @returns {Promise<Session>}
   */
  async createSession(user, session, options = {}) {
    const o = onlyKnown('session options', options, ['title', 'persona'])
    const patch = JSON.stringify({ title: o.title, persona: o.persona })
    return toSession(JSON.parse(await run(() => this.engine.createSession(user, session, patch))))
  }

  /**
   * The user's memories, newest first, read `pageSize` at a time; narrowed by `filter` as a
   * search is (without `asOf` or `includeSuperseded`: the current ones).
   * @param {string} user
   * @param {{ filter?: Filter, pageSize?: number }} [options]
   * @returns {AsyncGenerator<StoredMemory>}
   */
  async *memories(user, options = {}) {
    const o = onlyKnown('memories options', options, ['filter', 'pageSize'])
    const filter = o.filter === undefined ? '' : encode(o.filter)
    const first = whole('pageSize', o.pageSize ?? 100, 0xffffffff)
    /** @type {string | null} */
    let after = null
    do {
      const page = JSON.parse(await run(() => this.engine.memories(user, filter, first, after)))
      yield* page.items.map(toMemory)
      after = page.next
    } while (after !== null)
  }

  /**
   * The user's sessions, newest first, read `pageSize` at a time.
   * @param {string} user
   * @param {{ pageSize?: number }} [options]
   * @returns {AsyncGenerator<Session>}
   */
  async *sessions(user, options = {}) {
    const o = onlyKnown('sessions options', options, ['pageSize'])
    const first = whole('pageSize', o.pageSize ?? 100, 0xffffffff)
    /** @type {string | null} */
    let after = null
    do {
      const page = JSON.parse(await run(() => this.engine.sessions(user, first, after)))
      yield* page.items.map(toSession)
      after = page.next
    } while (after !== null)
  }

  /**
   * The memories `id` replaced, itself, and those that replaced it, oldest first.
   * @param {string} user
   * @param {number} id
   * @returns {Promise<StoredMemory[]>}
   */
  async memoryHistory(user, id) {
    whole('a memory id', id)
    return JSON.parse(await run(() => this.engine.memoryHistory(user, id))).map(toMemory)
  }

  /**
   * Deletes the user's memories with these ids; returns how many there were. A memory that a
   * deleted one had replaced is current again.
   * @param {string} user
   * @param {number[]} ids
   * @returns {Promise<number>}
   */
  async deleteMemories(user, ids) {
    if (!Array.isArray(ids)) {
      throw new InvalidInputError('ids must be an array of memory ids')
    }
    ids.forEach((id) => whole('a memory id', id))
    return run(() => this.engine.deleteMemories(user, ids))
  }

  /**
   * Everything stored about the user, as `deep-recall export` prints it.
   * @param {string} user
   * @returns {Promise<Record<string, any>>}
   */
  async export(user) {
    return JSON.parse(await run(() => this.engine.export(user)))
  }

  /**
   * Deletes everything stored about the user; returns what was deleted.
   * @param {string} user
   * @returns {Promise<Record<string, any>>}
   */
  async forget(user) {
    return JSON.parse(await run(() => this.engine.forget(user)))
  }

  /**
   * Whether the user's memory keys are on, and how many they have.
   * @param {string} user
   * @returns {Promise<KeyStatus>}
   */
  async memoryKeys(user) {
    return JSON.parse(await run(() => this.engine.memoryKeys(user)))
  }

  /**
   * Turns the user's memory keys on (written in the background from then on) or off (their
   * keys are deleted; memories are untouched).
   * @param {string} user
   * @param {boolean} enabled
   * @returns {Promise<KeyStatus>}
   */
  async setMemoryKeys(user, enabled) {
    return JSON.parse(await run(() => this.engine.setMemoryKeys(user, enabled)))
  }

  /**
   * Writes the keys the user's memories lack now, rather than in the background (after an
   * import, say); resolves to how many were stored. `InvalidInputError` when the user's keys
   * are off.
   * @param {string} user
   * @returns {Promise<number>}
   */
  async writeMemoryKeys(user) {
    return run(() => this.engine.writeMemoryKeys(user))
  }

  /**
   * Answers `message` with the user's memory (the chat model loads on first use).
   * @param {string} user
   * @param {string} session
   * @param {string} message
   * @param {ChatOptions} [options]
   * @returns {Promise<ChatResult>}
   */
  async chat(user, session, message, options = {}) {
    const request = chatRequest(session, message, options)
    return toResult(await run(() => this.engine.chat(user, request)))
  }

  /**
   * Like `chat`, streamed: the text as it is generated (`{ delta }` objects), then the
   * result (`{ done: true, result }`). Leaving the loop early stops the generation.
   * @param {string} user
   * @param {string} session
   * @param {string} message
   * @param {ChatOptions} [options]
   * @returns {AsyncGenerator<{ delta: string } | { done: true, result: ChatResult }>}
   */
  async *chatStream(user, session, message, options = {}) {
    const request = chatRequest(session, message, options)
    const stream = await run(() => this.engine.chatStream(user, request))
    try {
      for (;;) {
        const next = await run(() => stream.next())
        if (next === null || next === undefined) {
          return
        }
        const [kind, payload] = next
        if (kind === 'delta') {
          yield { delta: payload }
        } else {
          yield { done: true, result: toResult(payload) }
        }
      }
    } finally {
      await stream.close()
    }
  }
}

module.exports = {
  Memory,
  DeepRecallError,
  InvalidInputError,
  NotFoundError,
  ModelError,
  UnavailableError,
}
