import type * as gql from './generated/graphql.js';

/** What a memory is. */
export type MemoryKind = Lowercase<gql.MemoryKind>;
/** Who wrote a message. */
export type Role = Lowercase<gql.Role>;
/** Which retrievers a search uses. */
export type SearchMode = Lowercase<gql.SearchMode>;
/** Why an answer ended. */
export type FinishReason = Lowercase<gql.FinishReason>;
/** What happened to a memory. */
export type MemoryAction = Lowercase<gql.MemoryAction>;

/** A memory: what retrieval finds. */
export interface Memory {
  id: string;
  kind: MemoryKind;
  content: string;
  /** The session it came from. */
  session: string | null;
  /** The message it came from. */
  messageId: string | null;
  /** The role of that message. */
  role: Role | null;
  tags: string[];
  metadata: Record<string, unknown>;
  /** In [0, 1]. */
  importance: number;
  /** The detected emotion. */
  emotion: string | null;
  /** When its source was written (RFC 3339). */
  createdAt: string;
  updatedAt: string;
  /** When it stops being returned (and is purged); null: never. */
  expiresAt: string | null;
  /** The memory it replaced. */
  supersedes: string | null;
  /** The memory that replaced it (searches return that one instead). */
  supersededBy: string | null;
  /** Since when it is no longer current. */
  supersededAt: string | null;
  /** For a key (kind `key`): the memory it is for. */
  keyFor: string | null;
}

/** A search result. */
export interface SearchHit {
  memory: Memory;
  /** The final score (higher is better; the raw cosine similarity in vector mode). */
  score: number;
  /** Embedding similarity, when the vector retriever found it. */
  similarity: number | null;
  /** BM25 score, when the text retriever found it. */
  bm25: number | null;
}

/** A stored message. */
export interface Message {
  id: string;
  session: string;
  role: Role;
  content: string;
  tags: string[];
  metadata: Record<string, unknown>;
  createdAt: string;
}

/** A message to store. */
export interface NewMessage {
  role: Role;
  content: string;
  /** When it was written (RFC 3339, or a Date); now when absent. */
  createdAt?: string | Date;
  tags?: string[];
  metadata?: Record<string, unknown>;
}

/** A conversation. */
export interface Session {
  id: string;
  title: string | null;
  persona: string | null;
  createdAt: string;
  updatedAt: string;
}

/** Whether the caller's memory keys are on, and how many they have. */
export interface MemoryKeysStatus {
  /** Keys are written for new memories in the background, and searches use them. */
  enabled: boolean;
  /** Keys stored (memories of kind `key`; searches return the memory, never the key). */
  keys: number;
}

/** What a background job does. */
export type JobKind = Lowercase<gql.JobKind>;

/** Where a background job is: `queued`, `running`, then `succeeded`, `failed` or `cancelled`. */
export type JobStatus = Lowercase<gql.JobStatus>;

/** One of the caller's background jobs (`writeMemoryKeys`, `scheduleDeleteMyData`). */
export interface Job {
  id: string;
  kind: JobKind;
  status: JobStatus;
  /** Share done, 0 to 1. */
  progress: number;
  /** What it is doing now. */
  message: string | null;
  /** What it did (a JSON object), once succeeded. */
  result: unknown;
  /** Why it failed. */
  error: string | null;
  attempts: number;
  /** Not before this time. */
  runAt: string;
  createdAt: string;
  updatedAt: string;
  startedAt: string | null;
  finishedAt: string | null;
}

export function job(j: gql.JobFieldsFragment): Job {
  return { ...j, kind: lower(j.kind), status: lower(j.status) };
}

/** Held-out recall of a deep memory adapter, without (`before`) or with it (`after`). */
export interface RecallFigures {
  recallAt1: number;
  recallAt5: number;
  recallAt10: number;
  mrr: number;
}

/** Where the caller's deep memory stands: pairs, the adapter, its evaluation. */
export interface DeepMemoryStatus {
  /** Question–memory pairs stored, of which written by the chat model, and held out. */
  pairs: number;
  generatedPairs: number;
  heldOutPairs: number;
  /** Memories with at least one pair, of the caller's memories. */
  memoriesWithPairs: number;
  memories: number;
  /** Whether an adapter was trained, and its version (one up per training). */
  trained: boolean;
  version: number | null;
  /** Turned on; `active`: searches use it now. */
  enabled: boolean;
  active: boolean;
  /** Why it is on but not used. */
  inactiveReason: string | null;
  embeddingModel: string | null;
  trainedAt: string | null;
  /** Memories added since the training. */
  newMemories: number;
  /** Its evaluation on the held-out pairs; it can be turned on only when it `helps`. */
  evaluation: {
    pairs: number;
    helps: boolean;
    before: RecallFigures;
    after: RecallFigures;
  } | null;
  /** The training (pairs, epochs, loss per epoch, seconds). */
  training: unknown;
}

/** A question that one of the caller's memories answers. */
export interface DeepMemoryPair {
  question: string;
  memoryId: string;
}

/** The calling user. */
export interface User {
  id: string;
  admin: boolean;
  /** When the user was first seen (null before their first write). */
  createdAt: string | null;
  memoryCount: number;
}

/** What `deleteMyData` removed. */
export interface DeletionReport {
  existed: boolean;
  sessions: number;
  messages: number;
  memories: number;
  /** Embedding vectors removed. */
  embeddings: number;
  /** Summaries removed. */
  summaries: number;
}

/** A memory that went into a chat answer's prompt. */
export interface ContextMemory {
  memoryId: string;
  kind: MemoryKind;
  content: string;
  session: string | null;
  score: number;
  createdAt: string;
}

/** Token counts. */
export interface Usage {
  promptTokens: number;
  completionTokens: number;
  totalTokens: number;
}

/** Timings in milliseconds. */
export interface Latency {
  retrievalMs: number;
  firstTokenMs: number;
  totalMs: number;
}

/** The next piece of a streamed answer. */
export interface ChatDelta {
  delta: string;
}

/** The end of a streamed answer: the whole result. */
export interface ChatFinal {
  text: string;
  /** The memories the answer was given, best first. */
  context: ContextMemory[];
  usage: Usage;
  finishReason: FinishReason;
  /** The stored user message. */
  messageId: string;
  /** The stored answer. */
  replyId: string | null;
  model: string;
  latency: Latency;
  /** Mean log-probability of the answer's tokens (0 is certain); null when unknown. */
  confidence: number | null;
}

/** What `chat` yields: deltas, then one final result. */
export type ChatChunk = ChatDelta | ChatFinal;

/** A change to one of the caller's memories. */
export interface MemoryEvent {
  action: MemoryAction;
  memoryId: string;
  kind: MemoryKind | null;
  /** The memory after the change, when the writer had it. */
  memory: Memory | null;
}

/** Narrows listings and searches. */
export interface MemoryFilter {
  session?: string;
  kinds?: MemoryKind[];
  roles?: Role[];
  tags?: string[];
  /** Written at or after (RFC 3339 or a Date). */
  since?: string | Date;
  /** Written before. */
  until?: string | Date;
  /** What was true then (written by then, neither superseded nor expired by then). */
  asOf?: string | Date;
  /** The replaced memories too. */
  includeSuperseded?: boolean;
  /** Conditions on the metadata, all of which must hold. */
  metadata?: MetadataCondition[];
}

/** A comparison of a metadata value. */
export type MetadataOp = Lowercase<gql.MetadataOp>;

/** One condition on a memory's metadata: `{ key: 'priority', op: 'gte', value: 2 }`. */
export interface MetadataCondition {
  /** A dotted path into the metadata (`source.app`). */
  key: string;
  op: MetadataOp;
  /** Any JSON: an array for `in`, a number or an RFC 3339 time to compare, a boolean for `exists`. */
  value?: unknown;
}

export function lower<T extends string>(value: T): Lowercase<T> {
  return value.toLowerCase() as Lowercase<T>;
}

export function upper<T extends string>(value: T): Uppercase<T> {
  return value.toUpperCase() as Uppercase<T>;
}

function object(value: unknown): Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : {};
}

export function time(value: string | Date | undefined): string | undefined {
  return value instanceof Date ? value.toISOString() : value;
}

export function memory(m: gql.MemoryFieldsFragment): Memory {
  return {
    ...m,
    kind: lower(m.kind),
    role: m.role === null ? null : lower(m.role),
    metadata: object(m.metadata),
  };
}

export function message(m: gql.MessageFieldsFragment): Message {
  return { ...m, role: lower(m.role), metadata: object(m.metadata) };
}

export function filter(f: MemoryFilter | undefined): gql.MemoryFilter | undefined {
  if (f === undefined) return undefined;
  return {
    session: f.session,
    kinds: f.kinds?.map(upper),
    roles: f.roles?.map(upper),
    tags: f.tags,
    since: time(f.since),
    until: time(f.until),
    asOf: time(f.asOf),
    includeSuperseded: f.includeSuperseded,
    metadata: f.metadata?.map((c) => ({ key: c.key, op: upper(c.op), value: c.value })),
  };
}
