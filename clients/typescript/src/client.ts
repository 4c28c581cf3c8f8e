import { createClient, type Client as WsClient } from 'graphql-ws';

import {
  DeepRecallError,
  type FormattedError,
  fromGraphQLErrors,
  fromSubscriptionFailure,
} from './errors.js';
import {
  AddMemoryDocument,
  AddMessagesDocument,
  CancelJobDocument,
  ChatDocument,
  CreateSessionDocument,
  DeepMemoryAddPairsDocument,
  DeepMemoryDisableDocument,
  DeepMemoryEnableDocument,
  DeepMemoryGenerateDocument,
  DeepMemoryStatusDocument,
  DeepMemoryTrainDocument,
  DeleteMemoryDocument,
  DeleteMyDataDocument,
  DeleteSessionDocument,
  ExportMyDataDocument,
  JobDocument,
  JobProgressDocument,
  MeDocument,
  MemoriesDocument,
  MemoryEventsDocument,
  MemoryHistoryDocument,
  MemoryKeysEnableDocument,
  MemoryKeysStatusDocument,
  MemoryKeysWriteDocument,
  MessagesDocument,
  ScheduleDeleteMyDataDocument,
  SearchDocument,
  SessionsDocument,
  type MemoriesQuery,
  type MessagesQuery,
  type SessionsQuery,
  type TypedDocumentString,
} from './generated/graphql.js';
import {
  type ChatChunk,
  type ChatFinal,
  type DeepMemoryPair,
  type DeepMemoryStatus,
  type DeletionReport,
  type Job,
  job,
  type Memory,
  type MemoryEvent,
  type MemoryFilter,
  type MemoryKeysStatus,
  type MemoryKind,
  type MetadataCondition,
  type Message,
  type NewMessage,
  type SearchHit,
  type SearchMode,
  type Session,
  type User,
  filter,
  lower,
  memory,
  message,
  time,
  upper,
} from './types.js';

/** How to reach the server and who the caller is. */
export interface DeepRecallOptions {
  /** The server (`http://localhost:8080`) or its GraphQL endpoint (`.../graphql`). */
  url: string;
  /** A bearer token (a JWT or an API key). */
  token?: string;
  /**
   * Called before every request and subscription, for tokens that expire; a subscription
   * started with a new token opens a WebSocket of its own.
   */
  getToken?: () => string | Promise<string>;
  /** Anonymous development mode only: the user to act as (`X-User-Id`). */
  user?: string;
  /** Retries of a failed request (default 3); see the README for which failures. */
  retries?: number;
  /** The first back-off in milliseconds (default 250); it doubles with each retry. */
  retryDelayMs?: number;
  /**
   * How long one request may take, in milliseconds (default 60000), answer included; past it
   * the request is abandoned as a `NETWORK` error (so a mutation is not retried).
   */
  timeoutMs?: number;
  /** The fetch to use (default: the global one). */
  fetch?: typeof globalThis.fetch;
  /**
   * The WebSocket class for subscriptions (default: the global one; Node.js 20 has none: pass
   * `WebSocket` from the `ws` package).
   */
  webSocketImpl?: unknown;
}

/** Options of `search`: how many, how, and a filter (`session`, `kinds`, `roles`, `tags`, `since`,
 * `until`, `asOf`, `includeSuperseded`, `metadata`). */
export interface SearchOptions extends MemoryFilter {
  /** How many results (default 10). */
  topK?: number;
  /** `hybrid` (default), `vector` or `text`. */
  mode?: SearchMode;
}

/** Options of `writeMemoryKeys`: which keys, and how fast (the server's defaults otherwise). */
export interface WriteMemoryKeysOptions {
  /** Context keys: each turn with the turn before it (no chat model needed). */
  context?: boolean;
  /** Facts the chat model reads in each message. */
  facts?: boolean;
  /** The topic the chat model gives each stretch of a session. */
  sessions?: boolean;
  /** Keys written in this run at most. */
  maxKeys?: number;
  /** Pause after each group of memories, in milliseconds (a rate limit). */
  pauseMs?: number;
}

/** Options of `deepMemoryGenerate` (the server's defaults otherwise). */
export interface DeepMemoryGenerateOptions {
  /** Questions per memory, 1 to 5. */
  questionsPerMemory?: number;
  /** Pairs written in this run at most. */
  maxPairs?: number;
}

/** Options of `deepMemoryTrain` (the server's defaults otherwise). */
export interface DeepMemoryTrainOptions {
  /** Rank of the adapter (1 to 256). */
  rank?: number;
  /** Passes over the pairs (1 to 1000). */
  epochs?: number;
  learningRate?: number;
  /** Hard negatives per question. */
  hardNegatives?: number;
}

/** Options of `createSession`: what is given is set, the rest stays as it is. */
export interface SessionOptions {
  title?: string;
  /**
   * A persona card (who the assistant is: a name, a manner, a backstory), stored as the
   * session's `persona` memories, chunked by sentences and replacing those of the card before.
   */
  persona?: string;
}

/** Options of `addMemory`. */
export interface AddMemoryOptions {
  /** `fact` by default. */
  kind?: MemoryKind;
  session?: string;
  tags?: string[];
  /** In [0, 1]; estimated from the text when absent. */
  importance?: number;
  /** A JSON object to filter by (`metadata` conditions). */
  metadata?: Record<string, unknown>;
  /** When it expires (then no longer returned, and purged). */
  expiresAt?: string | Date;
  /** Or: expires this many seconds after it is stored. */
  ttlSeconds?: number;
  /** The id of a current memory that this one replaces (kept as history). */
  supersedes?: string;
}

/** Options of `chat`. */
export interface ChatOptions {
  maxTokens?: number;
  /** 0 is greedy. */
  temperature?: number;
  topP?: number;
  topK?: number;
  seed?: number;
  /** Texts that end the answer. */
  stop?: string[];
  /** A system prompt for this turn. */
  system?: string;
  /** Memories retrieved for the prompt at most. */
  memoryTopK?: number;
  /** How memories are retrieved. */
  mode?: SearchMode;
  /** Aborting ends the stream (and the server stops generating). */
  signal?: AbortSignal;
}

/** Options of the paginated listings. */
export interface PageOptions {
  /** Items fetched per request (default 50). */
  pageSize?: number;
}

interface Response<T> {
  data?: T | null;
  errors?: FormattedError[];
}

const RETRYABLE = new Set(['UNAVAILABLE', 'RATE_LIMITED']);
/** Failures after which a write may have happened: a query is retried, a mutation is not. */
const UNKNOWN = new Set(['TIMEOUT', 'NETWORK']);

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function endpoints(url: string): { http: string; ws: string } {
  const base = url.replace(/\/+$/, '');
  const http = base.endsWith('/graphql') ? base : `${base}/graphql`;
  return { http, ws: http.replace(/^http/, 'ws') };
}

/** A `Retry-After` header: seconds, or an HTTP date. */
function retryAfterHeader(value: string | null): number | undefined {
  const text = value?.trim();
  if (!text) return undefined;
  const seconds = Number(text);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const at = Date.parse(text);
  return Number.isNaN(at) ? undefined : Math.max(0, (at - Date.now()) / 1000);
}

/** A graphql-ws client and the credentials its connections are opened with. */
interface Socket {
  readonly client: WsClient;
  /** Its `connection_init` payload, as JSON (to compare with the credentials of now). */
  readonly credentials: string;
  /** Its subscriptions that have not ended. */
  active: number;
}

/** Closes a socket no subscription uses any more (a failure to close it is of no concern). */
function dispose(socket: Socket): void {
  Promise.resolve(socket.client.dispose()).catch(() => undefined);
}

/**
 * A Deep Recall server, seen by one caller: their memories, sessions and chats.
 *
 * ```ts
 * const dr = new DeepRecall({ url: 'http://localhost:8080', token })
 * await dr.addMessages('s1', [{ role: 'user', content: "I'm allergic to peanuts." }])
 * const [hit] = await dr.search("What can't I eat?")
 * for await (const c of dr.chat('s2', 'Suggest a snack.')) if ('delta' in c) process.stdout.write(c.delta)
 * ```
 */
export class DeepRecall {
  readonly #http: string;
  readonly #ws: string;
  readonly #options: DeepRecallOptions;
  readonly #fetch: typeof globalThis.fetch;
  /** The socket new subscriptions join while the credentials stay the same. */
  #socket: Socket | undefined;
  /** Sockets opened with older credentials, until their last subscription ends. */
  readonly #retired = new Set<Socket>();

  constructor(options: DeepRecallOptions) {
    if (!options.url) throw new DeepRecallError('BAD_INPUT', 'url is required');
    const { http, ws } = endpoints(options.url);
    this.#http = http;
    this.#ws = ws;
    this.#options = options;
    const f = options.fetch ?? globalThis.fetch;
    if (typeof f !== 'function') {
      throw new DeepRecallError('BAD_INPUT', 'no fetch: pass options.fetch');
    }
    // Browsers refuse a `fetch` called on anything but the window ("Illegal invocation").
    this.#fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  async #token(): Promise<string | undefined> {
    if (this.#options.getToken) return await this.#options.getToken();
    return this.#options.token;
  }

  async #headers(): Promise<Record<string, string>> {
    const headers: Record<string, string> = {
      'content-type': 'application/json',
      accept: 'application/graphql-response+json, application/json',
    };
    const token = await this.#token();
    if (token) headers.authorization = `Bearer ${token}`;
    else if (this.#options.user) headers['x-user-id'] = this.#options.user;
    return headers;
  }

  /** One GraphQL request, retried as the README says. */
  async #request<R, V>(
    document: TypedDocumentString<R, V>,
    variables: V,
    kind: 'query' | 'mutation',
  ): Promise<R> {
    const retries = this.#options.retries ?? 3;
    const base = this.#options.retryDelayMs ?? 250;
    const body = JSON.stringify({ query: document.toString(), variables });
    for (let attempt = 0; ; attempt++) {
      let error: DeepRecallError;
      let retryable: boolean;
      try {
        return await this.#once<R>(body);
      } catch (e) {
        error =
          e instanceof DeepRecallError
            ? e
            : new DeepRecallError('NETWORK', `cannot reach ${this.#http}: ${String(e)}`, {
                cause: e,
              });
        retryable =
          RETRYABLE.has(error.code) || (kind === 'query' && UNKNOWN.has(error.code));
      }
      if (!retryable || attempt >= retries) throw error;
      const backoff = base * 2 ** attempt * (0.5 + Math.random() / 2);
      const wait = Math.min(Math.max(backoff, (error.retryAfter ?? 0) * 1000), 30_000);
      await sleep(wait);
    }
  }

  async #once<R>(body: string): Promise<R> {
    const response = await this.#fetch(this.#http, {
      method: 'POST',
      headers: await this.#headers(),
      body,
      signal: AbortSignal.timeout(this.#options.timeoutMs ?? 60_000),
    });
    const status = response.status;
    const retryAfter = retryAfterHeader(response.headers.get('retry-after'));
    let parsed: unknown;
    let failure: unknown;
    try {
      parsed = await response.json();
    } catch (e) {
      failure = e;
    }
    const graphql =
      typeof parsed === 'object' && parsed !== null && ('data' in parsed || 'errors' in parsed);
    if (!graphql) {
      // Refusals before the request was read are the caller's to act on: a body over the
      // server's limit (413, not worth retrying) and a rate limit (429, a proxy's too: the
      // request was not run, so a mutation may be sent again after the wait).
      if (status === 413 || status === 429) {
        throw new DeepRecallError(
          status === 413 ? 'BAD_INPUT' : 'RATE_LIMITED',
          `${this.#http} refused the request with HTTP ${status}`,
          { status, retryAfter, cause: failure },
        );
      }
      // Any other answer that is not the server's (a proxy's error page, say): whether a write
      // happened behind it is unknown, so it is a network error, never retried for a mutation.
      throw new DeepRecallError(
        'NETWORK',
        `${this.#http} answered HTTP ${status} without GraphQL`,
        { status, cause: failure },
      );
    }
    const { data, errors } = parsed as Response<R>;
    if (errors && errors.length > 0) throw fromGraphQLErrors(errors, status, retryAfter);
    if (data === undefined || data === null) {
      throw new DeepRecallError('INTERNAL', 'the server answered no data', { status });
    }
    return data;
  }

  /** The `connection_init` payload: the credentials of now. */
  async #connectionParams(): Promise<Record<string, string>> {
    const token = await this.#token();
    if (token) return { Authorization: `Bearer ${token}` };
    if (this.#options.user) return { 'x-user-id': this.#options.user };
    return {};
  }

  /**
   * The socket for a new subscription, counted as one of its subscriptions until `#release`.
   * New credentials (a refreshed token) open a socket of their own: the server closes a socket
   * when the token it was opened with expires, with every subscription on it.
   */
  async #acquire(): Promise<Socket> {
    const params = await this.#connectionParams();
    const credentials = JSON.stringify(params);
    const current = this.#socket;
    if (current !== undefined && current.credentials === credentials) {
      current.active += 1;
      return current;
    }
    const impl = this.#options.webSocketImpl ?? (globalThis as { WebSocket?: unknown }).WebSocket;
    if (impl === undefined) {
      throw new DeepRecallError(
        'BAD_INPUT',
        'no WebSocket in this runtime: pass options.webSocketImpl (WebSocket from the `ws` package on Node.js 20)',
      );
    }
    const socket: Socket = {
      client: createClient({
        url: this.#ws,
        webSocketImpl: impl,
        lazy: true,
        retryAttempts: 0,
        // The server drops a socket that is silent for 60 s, even under a long answer.
        keepAlive: 20_000,
        // Fixed: a later connection of this client (after it went idle) is only made while
        // the credentials are still these.
        connectionParams: params,
      }),
      credentials,
      active: 1,
    };
    this.#socket = socket;
    if (current !== undefined) {
      // The old socket closes with its last subscription.
      if (current.active === 0) dispose(current);
      else this.#retired.add(current);
    }
    return socket;
  }

  /** Ends one subscription of `socket`; a retired socket goes with its last. */
  #release(socket: Socket): void {
    socket.active -= 1;
    if (socket.active === 0 && this.#retired.delete(socket)) dispose(socket);
  }

  /** The results of a subscription, until it completes, the consumer stops or `signal` aborts. */
  async *#subscribe<R, V>(
    document: TypedDocumentString<R, V>,
    variables: V,
    signal?: AbortSignal,
  ): AsyncGenerator<R> {
    if (signal?.aborted) return;
    let socket: Socket;
    try {
      socket = await this.#acquire();
    } catch (e) {
      throw fromSubscriptionFailure(e);
    }
    const iterator = socket.client.iterate<R>({
      query: document.toString(),
      variables: variables as Record<string, unknown>,
    });
    const abort = () => void iterator.return?.();
    signal?.addEventListener('abort', abort, { once: true });
    try {
      if (signal?.aborted) return;
      for (;;) {
        let next: IteratorResult<{ data?: R | null; errors?: readonly FormattedError[] }>;
        try {
          next = await iterator.next();
        } catch (e) {
          throw fromSubscriptionFailure(e);
        }
        if (next.done) return;
        const { data, errors } = next.value;
        if (errors && errors.length > 0) throw fromGraphQLErrors(errors);
        if (data) yield data;
      }
    } finally {
      signal?.removeEventListener('abort', abort);
      try {
        await iterator.return?.();
      } finally {
        this.#release(socket);
      }
    }
  }

  /** The calling user. */
  async me(): Promise<User> {
    return (await this.#request(MeDocument, {}, 'query')).me;
  }

  /** The caller's memories that matter for `query`, best first. */
  async search(query: string, options: SearchOptions = {}): Promise<SearchHit[]> {
    const { search } = await this.#request(
      SearchDocument,
      {
        query,
        topK: options.topK ?? 10,
        mode: upper(options.mode ?? 'hybrid'),
        filter: filter(options),
      },
      'query',
    );
    return search.map((h) => ({ ...h, memory: memory(h.memory) }));
  }

  /** Stores messages in a session (each also becomes a searchable memory), all or none. */
  async addMessages(session: string, messages: NewMessage[]): Promise<Message[]> {
    const { addMessages } = await this.#request(
      AddMessagesDocument,
      {
        messages: messages.map((m) => ({
          session,
          role: upper(m.role),
          content: m.content,
          createdAt: time(m.createdAt),
          tags: m.tags,
          metadata: m.metadata,
        })),
      },
      'mutation',
    );
    return addMessages.map(message);
  }

  /** Adds a free-standing memory (a fact by default). */
  async addMemory(content: string, options: AddMemoryOptions = {}): Promise<Memory> {
    const { addMemory } = await this.#request(
      AddMemoryDocument,
      {
        input: {
          content,
          kind: options.kind === undefined ? undefined : upper(options.kind),
          session: options.session,
          tags: options.tags,
          importance: options.importance,
          metadata: options.metadata,
          expiresAt: time(options.expiresAt),
          ttlSeconds: options.ttlSeconds,
          supersedes: options.supersedes,
        },
      },
      'mutation',
    );
    return memory(addMemory);
  }

  /** The memories `id` replaced, itself, and those that replaced it, oldest first. */
  async memoryHistory(id: string): Promise<Memory[]> {
    const { memoryHistory } = await this.#request(MemoryHistoryDocument, { id }, 'query');
    return memoryHistory.map(memory);
  }

  /** Every session of the caller, newest first, fetched a page at a time. */
  async *sessions(options: PageOptions = {}): AsyncGenerator<Session> {
    let after: string | null = null;
    do {
      const { sessions }: SessionsQuery = await this.#request(
        SessionsDocument,
        { first: options.pageSize ?? 50, after },
        'query',
      );
      yield* sessions.nodes;
      after = sessions.pageInfo.hasNextPage ? sessions.pageInfo.endCursor : null;
    } while (after !== null);
  }

  /** The messages of a session, oldest first, fetched a page at a time. */
  async *messages(session: string, options: PageOptions = {}): AsyncGenerator<Message> {
    let after: string | null = null;
    do {
      const { messages }: MessagesQuery = await this.#request(
        MessagesDocument,
        { session, first: options.pageSize ?? 50, after },
        'query',
      );
      yield* messages.nodes.map(message);
      after = messages.pageInfo.hasNextPage ? messages.pageInfo.endCursor : null;
    } while (after !== null);
  }

  /** The caller's memories, newest first, fetched a page at a time. */
  async *memories(options: PageOptions & { filter?: MemoryFilter } = {}): AsyncGenerator<Memory> {
    let after: string | null = null;
    do {
      const { memories }: MemoriesQuery = await this.#request(
        MemoriesDocument,
        { filter: filter(options.filter), first: options.pageSize ?? 50, after },
        'query',
      );
      yield* memories.nodes.map(memory);
      after = memories.pageInfo.hasNextPage ? memories.pageInfo.endCursor : null;
    } while (after !== null);
  }

  /** Deletes a memory; a memory that does not exist is a `NOT_FOUND` error. */
  async deleteMemory(id: string): Promise<true> {
    await this.#request(DeleteMemoryDocument, { id }, 'mutation');
    return true;
  }

  /** Creates a session (or sets the title and persona card of one that exists). */
  async createSession(id: string, options: SessionOptions = {}): Promise<Session> {
    const { createSession } = await this.#request(
      CreateSessionDocument,
      { id, title: options.title, persona: options.persona },
      'mutation',
    );
    return createSession;
  }

  /** Whether the caller's memory keys are on, and how many they have. */
  async memoryKeys(): Promise<MemoryKeysStatus> {
    return (await this.#request(MemoryKeysStatusDocument, {}, 'query')).memoryKeysStatus;
  }

  /**
   * Turns the caller's memory keys on (the server writes them in the background from then on)
   * or off (their keys are deleted; memories are untouched).
   */
  async setMemoryKeys(enabled: boolean): Promise<MemoryKeysStatus> {
    return (await this.#request(MemoryKeysEnableDocument, { enabled }, 'mutation'))
      .memoryKeysEnable;
  }

  /**
   * Queues a job that writes the keys the caller's memories lack (keys must be on); follow it
   * with `jobProgress`.
   */
  async writeMemoryKeys(options: WriteMemoryKeysOptions = {}): Promise<Job> {
    const input = {
      context: options.context,
      facts: options.facts,
      sessions: options.sessions,
      maxKeys: options.maxKeys,
      pauseMs: options.pauseMs,
    };
    return job((await this.#request(MemoryKeysWriteDocument, { input }, 'mutation')).memoryKeysWrite);
  }

  /** One of the caller's background jobs, or null when they have none with this id. */
  async job(id: string): Promise<Job | null> {
    const found = (await this.#request(JobDocument, { id }, 'query')).job;
    return found === null ? null : job(found);
  }

  /**
   * A job as it is now, then each change, until it succeeds, fails or is cancelled (or the loop
   * ends, or `signal` aborts). Another user's job, or none, is a `NOT_FOUND` error.
   */
  async *jobProgress(id: string, options: { signal?: AbortSignal } = {}): AsyncGenerator<Job> {
    for await (const { jobProgress } of this.#subscribe(
      JobProgressDocument,
      { id },
      options.signal,
    )) {
      yield job(jobProgress);
    }
  }

  /** Cancels one of the caller's queued jobs (a scheduled deletion, say). */
  async cancelJob(id: string): Promise<Job> {
    return job((await this.#request(CancelJobDocument, { id }, 'mutation')).cancelJob);
  }

  /**
   * Schedules the deletion of everything stored about the caller at `at` (at most a year ahead;
   * a past time means now); `cancelJob` stops it until it starts.
   */
  async scheduleDeleteMyData(at: string | Date): Promise<Job> {
    const when = at instanceof Date ? at.toISOString() : at;
    return job(
      (await this.#request(ScheduleDeleteMyDataDocument, { at: when }, 'mutation'))
        .scheduleDeleteMyData,
    );
  }

  /** Where the caller's deep memory stands: pairs, the adapter, its evaluation. */
  async deepMemoryStatus(): Promise<DeepMemoryStatus> {
    return (await this.#request(DeepMemoryStatusDocument, {}, 'query')).deepMemoryStatus;
  }

  /**
   * Adds questions that the caller's memories answer (a search result they used, say); at
   * most 1000 per call. How many were stored; a memory that is not theirs is `NOT_FOUND`.
   */
  async deepMemoryAddPairs(pairs: DeepMemoryPair[]): Promise<number> {
    const p = pairs.map((x) => ({ question: x.question, memoryId: x.memoryId }));
    return (await this.#request(DeepMemoryAddPairsDocument, { pairs: p }, 'mutation'))
      .deepMemoryAddPairs;
  }

  /** Queues a job in which the chat model writes questions the caller's memories answer. */
  async deepMemoryGenerate(options: DeepMemoryGenerateOptions = {}): Promise<Job> {
    const input = { questionsPerMemory: options.questionsPerMemory, maxPairs: options.maxPairs };
    return job(
      (await this.#request(DeepMemoryGenerateDocument, { input }, 'mutation')).deepMemoryGenerate,
    );
  }

  /**
   * Queues the training of the caller's adapter on their pairs (the job's result holds its
   * evaluation); a new adapter stays off until `deepMemoryEnable`.
   */
  async deepMemoryTrain(options: DeepMemoryTrainOptions = {}): Promise<Job> {
    const input = {
      rank: options.rank,
      epochs: options.epochs,
      learningRate: options.learningRate,
      hardNegatives: options.hardNegatives,
    };
    return job((await this.#request(DeepMemoryTrainDocument, { input }, 'mutation')).deepMemoryTrain);
  }

  /** Turns the caller's adapter on; `BAD_INPUT` when none is trained or it does not help. */
  async deepMemoryEnable(): Promise<DeepMemoryStatus> {
    return (await this.#request(DeepMemoryEnableDocument, {}, 'mutation')).deepMemoryEnable;
  }

  /** Turns the caller's adapter off, at once. */
  async deepMemoryDisable(): Promise<DeepMemoryStatus> {
    return (await this.#request(DeepMemoryDisableDocument, {}, 'mutation')).deepMemoryDisable;
  }

  /** Deletes a session with its messages and their memories. */
  async deleteSession(id: string): Promise<true> {
    await this.#request(DeleteSessionDocument, { id }, 'mutation');
    return true;
  }

  /** Everything stored about the caller. */
  async exportMyData(): Promise<Record<string, unknown>> {
    const { exportMyData } = await this.#request(ExportMyDataDocument, {}, 'mutation');
    return exportMyData as Record<string, unknown>;
  }

  /** Deletes everything stored about the caller, now. */
  async deleteMyData(): Promise<DeletionReport> {
    return (await this.#request(DeleteMyDataDocument, {}, 'mutation')).deleteMyData;
  }

  /**
   * Answers `text` in `session` with the caller's memory, streamed: `{ delta }` objects as the
   * answer grows, then one final result. Leaving the loop early (or aborting `signal`) stops
   * the generation on the server.
   */
  async *chat(session: string, text: string, options: ChatOptions = {}): AsyncGenerator<ChatChunk> {
    const input = {
      session,
      message: text,
      maxTokens: options.maxTokens,
      temperature: options.temperature,
      topP: options.topP,
      topK: options.topK,
      seed: options.seed,
      stop: options.stop,
      system: options.system,
      memoryTopK: options.memoryTopK,
      mode: options.mode === undefined ? undefined : upper(options.mode),
    };
    for await (const { chat } of this.#subscribe(ChatDocument, { input }, options.signal)) {
      if (chat.delta) yield { delta: chat.delta };
      if (chat.done && chat.result) {
        const r = chat.result;
        const final: ChatFinal = {
          text: r.text,
          context: r.context.map((c) => ({ ...c, kind: lower(c.kind) })),
          usage: r.usage,
          finishReason: lower(r.finishReason),
          messageId: r.messageId,
          replyId: r.replyId,
          model: r.model,
          latency: r.latency,
          confidence: r.confidence,
        };
        yield final;
        return;
      }
    }
  }

  /** Changes to the caller's memories from now on, until the loop ends or `signal` aborts. */
  async *memoryEvents(options: { signal?: AbortSignal } = {}): AsyncGenerator<MemoryEvent> {
    for await (const { memoryEvents: e } of this.#subscribe(
      MemoryEventsDocument,
      {},
      options.signal,
    )) {
      yield {
        action: lower(e.action),
        memoryId: e.memoryId,
        kind: e.kind === null ? null : lower(e.kind),
        memory: e.memory === null ? null : memory(e.memory),
      };
    }
  }

  /**
   * Closes the WebSockets (if any are open; their subscriptions end); the client can still be
   * used afterwards.
   */
  async close(): Promise<void> {
    const sockets = [...this.#retired];
    if (this.#socket !== undefined) sockets.push(this.#socket);
    this.#socket = undefined;
    this.#retired.clear();
    await Promise.all(sockets.map((s) => s.client.dispose()));
  }
}
