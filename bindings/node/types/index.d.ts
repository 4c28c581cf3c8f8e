export type OpenOptions = {
    /**
     * the embedded store's directory (`./data` by default)
     */
    dataDir?: string | undefined;
    /**
     * Postgres instead (`postgres://...`)
     */
    databaseUrl?: string | undefined;
    /**
     * where the models are (`./models`; `deep-recall models fetch`)
     */
    modelsDir?: string | undefined;
    /**
     * `auto` (default), `cpu`, `cuda:N` or `metal:N`
     */
    device?: string | undefined;
    /**
     * the embedder's arithmetic on the CPU: `f32`
     * (default) or `int8` (about twice as fast; cosine ≥ 0.99 to the F32 vectors)
     */
    embeddingPrecision?: "f32" | "int8" | undefined;
    /**
     * a local chat model (a .gguf file, a safetensors directory or
     * a name under modelsDir); the packaged SmolLM2-135M-Instruct by default
     */
    chatModel?: string | undefined;
    /**
     * a remote OpenAI-compatible provider instead (`http://.../v1`)
     */
    chatUrl?: string | undefined;
    /**
     * the model name the provider knows
     */
    chatModelName?: string | undefined;
    /**
     * the provider's API key
     */
    chatApiKey?: string | undefined;
    /**
     * `addMemory` merges a new fact into one of the user's
     * at least this similar (0.95 for near-identical text) instead of storing it again
     */
    dedupeSimilarity?: number | undefined;
    /**
     * memories with one of these tags expire
     * that many seconds after they are stored (`{ scratch: 86400 }`)
     */
    tagTtlSeconds?: Record<string, number> | undefined;
    /**
     * new users get memory keys (true by default; see KeyStatus)
     */
    memoryKeys?: boolean | undefined;
    /**
     * seconds between looks for users who wrote,
     * whose new memories then get their keys in the background (60; 0: only `writeMemoryKeys`)
     */
    memoryKeysCheckSeconds?: number | undefined;
};
/**
 * Whether a user's memory keys are on, and how many they have. A key is a second way to find
 * a memory (a turn with the turn before it and the reply that goes on with it, so that a
 * question about either finds it); searches return the memory, never the key.
 */
export type KeyStatus = {
    enabled: boolean;
    keys: number;
};
export type Message = {
    role: "user" | "assistant" | "system";
    content: string;
    /**
     * when it was written (now by default)
     */
    ts?: string | Date | undefined;
    tags?: string[] | undefined;
    metadata?: Record<string, unknown> | undefined;
};
export type MetadataCondition = {
    /**
     * a dotted path into the metadata (`project`, `source.app`)
     */
    key: string;
    op: "eq" | "ne" | "in" | "gt" | "gte" | "lt" | "lte" | "contains" | "exists";
    /**
     * any JSON (an array for `in`, a number or an ISO time for the
     * comparisons, a boolean for `exists`)
     */
    value?: unknown;
};
export type Filter = {
    session?: string | undefined;
    kinds?: ("message" | "fact" | "persona" | "summary" | "key")[] | undefined;
    roles?: ("user" | "assistant" | "system")[] | undefined;
    /**
     * every one of these
     */
    tags?: string[] | undefined;
    /**
     * written at or after
     */
    since?: string | Date | undefined;
    /**
     * written before
     */
    until?: string | Date | undefined;
    /**
     * what was true then (written by then, neither superseded nor
     * expired by then) instead of what is current
     */
    asOf?: string | Date | undefined;
    /**
     * the replaced memories too
     */
    includeSuperseded?: boolean | undefined;
    /**
     * all must hold
     */
    metadata?: MetadataCondition[] | undefined;
};
export type SearchOptions = {
    /**
     * results (10)
     */
    topK?: number | undefined;
    /**
     * retrievers (`hybrid`: fused and re-ranked)
     */
    mode?: "hybrid" | "vector" | "text" | undefined;
    /**
     * only this session
     */
    session?: string | undefined;
    filter?: Filter | undefined;
};
export type NewMemory = {
    content: string;
    /**
     * `fact` by default
     */
    kind?: "message" | "fact" | "persona" | "summary" | undefined;
    session?: string | undefined;
    tags?: string[] | undefined;
    /**
     * in [0, 1] (estimated when absent)
     */
    importance?: number | undefined;
    /**
     * for metadata conditions
     */
    metadata?: Record<string, unknown> | undefined;
    /**
     * when it stops being returned (then purged)
     */
    expiresAt?: string | Date | undefined;
    /**
     * or: expires this long after it is stored
     */
    ttlSeconds?: number | undefined;
    /**
     * a current memory this one replaces (kept as history)
     */
    supersedes?: number | undefined;
};
export type StoredMemory = {
    id: number;
    kind: string;
    content: string;
    session: string | null;
    role: string | null;
    tags: string[];
    metadata: Record<string, unknown>;
    importance: number;
    createdAt: Date;
    expiresAt: Date | null;
    /**
     * the memory it replaced
     */
    supersedes: number | null;
    /**
     * the memory that replaced it
     */
    supersededBy: number | null;
    supersededAt: Date | null;
    /**
     * for a key (kind `key`): the memory it is for
     */
    keyFor: number | null;
};
export type Session = {
    id: string;
    title: string | null;
    /**
     * the card: who the assistant is in this conversation
     */
    persona: string | null;
    createdAt: Date;
    updatedAt: Date;
};
export type SessionOptions = {
    title?: string | undefined;
    /**
     * a persona card, stored as the session's `persona` memories
     */
    persona?: string | undefined;
};
export type Hit = {
    memoryId: number;
    content: string;
    /**
     * higher is better
     */
    score: number;
    session: string | null;
    role: string | null;
    /**
     * `message`, `fact`, `persona`, `summary` or `key`
     */
    kind: string;
    createdAt: Date;
    tags: string[];
    /**
     * what it was stored with, beside the engine's
     * signals (`emotion_confidence`, `event_windows`)
     */
    metadata: Record<string, unknown>;
    /**
     * the rest are on search hits, not in a chat's context
     */
    importance?: number | undefined;
    /**
     * when it stops being returned (never when null)
     */
    expiresAt?: Date | null | undefined;
    /**
     * the memory it replaced
     */
    supersedes?: number | null | undefined;
    /**
     * the memory that replaced it (a search with `asOf`
     * or `includeSuperseded` returns such history)
     */
    supersededBy?: number | null | undefined;
    supersededAt?: Date | null | undefined;
};
export type Usage = {
    promptTokens: number;
    completionTokens: number;
    totalTokens: number;
};
export type ChatResult = {
    text: string;
    /**
     * the memories that went into the prompt
     */
    context: Hit[];
    usage: Usage;
    finishReason: "stop" | "length" | "cancelled";
    /**
     * mean log-probability of the answer's tokens
     */
    confidence: number | null;
    model: string;
    session: string;
    messageId: number;
    replyId: number | null;
};
export type ChatOptions = {
    maxTokens?: number | undefined;
    temperature?: number | undefined;
    topP?: number | undefined;
    /**
     * sample from this many likeliest tokens
     */
    topK?: number | undefined;
    seed?: number | undefined;
    stop?: string[] | undefined;
    /**
     * a system prompt
     */
    system?: string | undefined;
    /**
     * memories retrieved for the prompt (10 by default)
     */
    memoryTopK?: number | undefined;
    /**
     * how they are retrieved (hybrid by default)
     */
    mode?: "hybrid" | "vector" | "text" | undefined;
};
/** A user-scoped long-term memory over one store. */
export class Memory {
    /**
     * Opens the store and loads the embedding model.
     * @param {OpenOptions} [options]
     * @returns {Promise<Memory>}
     */
    static open(options?: OpenOptions): Promise<Memory>;
    /**
     * @param {any} engine the addon's engine
     * @private
     */
    private constructor();
    /** @private */
    private engine;
    /**
     * Lets go of the store's connections (a Postgres pool), the background key writer and the
     * chat model now, rather than when the object is collected; calls under way finish, later
     * ones throw `InvalidInputError`. Closing twice does nothing.
     * @returns {Promise<void>}
     */
    close(): Promise<void>;
    /**
     * Stores messages (each also as a searchable memory), all or none; returns their ids.
     * @param {string} user
     * @param {string} session
     * @param {Message[]} messages
     * @returns {Promise<number[]>}
     */
    addMessages(user: string, session: string, messages: Message[]): Promise<number[]>;
    /**
     * The user's memories that matter for `query`, best first.
     * @param {string} user
     * @param {string} query
     * @param {SearchOptions} [options]
     * @returns {Promise<Hit[]>}
     */
    search(user: string, query: string, options?: SearchOptions): Promise<Hit[]>;
    /**
     * Stores a memory (a fact by default); with `supersedes`, it replaces one of the user's
     * current memories, which is kept as history and no longer found.
     * @param {string} user
     * @param {NewMemory} memory
     * @returns {Promise<StoredMemory>}
     */
    addMemory(user: string, memory: NewMemory): Promise<StoredMemory>;
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
    createSession(user: string, session: string, options?: SessionOptions): Promise<Session>;
    /**
     * The user's memories, newest first, read `pageSize` at a time; narrowed by `filter` as a
     * search is (without `asOf` or `includeSuperseded`: the current ones).
     * @param {string} user
     * @param {{ filter?: Filter, pageSize?: number }} [options]
     * @returns {AsyncGenerator<StoredMemory>}
     */
    memories(user: string, options?: {
        filter?: Filter;
        pageSize?: number;
    }): AsyncGenerator<StoredMemory>;
    /**
     * The user's sessions, newest first, read `pageSize` at a time.
     * @param {string} user
     * @param {{ pageSize?: number }} [options]
     * @returns {AsyncGenerator<Session>}
     */
    sessions(user: string, options?: {
        pageSize?: number;
    }): AsyncGenerator<Session>;
    /**
     * The memories `id` replaced, itself, and those that replaced it, oldest first.
     * @param {string} user
     * @param {number} id
     * @returns {Promise<StoredMemory[]>}
     */
    memoryHistory(user: string, id: number): Promise<StoredMemory[]>;
    /**
     * Deletes the user's memories with these ids; returns how many there were. A memory that a
     * deleted one had replaced is current again.
     * @param {string} user
     * @param {number[]} ids
     * @returns {Promise<number>}
     */
    deleteMemories(user: string, ids: number[]): Promise<number>;
    /**
     * Everything stored about the user, as `deep-recall export` prints it.
     * @param {string} user
     * @returns {Promise<Record<string, any>>}
     */
    export(user: string): Promise<Record<string, any>>;
    /**
     * Deletes everything stored about the user; returns what was deleted.
     * @param {string} user
     * @returns {Promise<Record<string, any>>}
     */
    forget(user: string): Promise<Record<string, any>>;
    /**
     * Whether the user's memory keys are on, and how many they have.
     * @param {string} user
     * @returns {Promise<KeyStatus>}
     */
    memoryKeys(user: string): Promise<KeyStatus>;
    /**
     * Turns the user's memory keys on (written in the background from then on) or off (their
     * keys are deleted; memories are untouched).
     * @param {string} user
     * @param {boolean} enabled
     * @returns {Promise<KeyStatus>}
     */
    setMemoryKeys(user: string, enabled: boolean): Promise<KeyStatus>;
    /**
     * Writes the keys the user's memories lack now, rather than in the background (after an
     * import, say); resolves to how many were stored. `InvalidInputError` when the user's keys
     * are off.
     * @param {string} user
     * @returns {Promise<number>}
     */
    writeMemoryKeys(user: string): Promise<number>;
    /**
     * Answers `message` with the user's memory (the chat model loads on first use).
     * @param {string} user
     * @param {string} session
     * @param {string} message
     * @param {ChatOptions} [options]
     * @returns {Promise<ChatResult>}
     */
    chat(user: string, session: string, message: string, options?: ChatOptions): Promise<ChatResult>;
    /**
     * Like `chat`, streamed: the text as it is generated (`{ delta }` objects), then the
     * result (`{ done: true, result }`). Leaving the loop early stops the generation.
     * @param {string} user
     * @param {string} session
     * @param {string} message
     * @param {ChatOptions} [options]
     * @returns {AsyncGenerator<{ delta: string } | { done: true, result: ChatResult }>}
     */
    chatStream(user: string, session: string, message: string, options?: ChatOptions): AsyncGenerator<{
        delta: string;
    } | {
        done: true;
        result: ChatResult;
    }>;
}
/**
 * Base class of Deep Recall's errors; `code` is stable.
 */
export class DeepRecallError extends Error {
    /**
     * @param {string} message
     * @param {string} [code]
     */
    constructor(message: string, code?: string);
    /** @type {string} */
    code: string;
}
/** The input was rejected; nothing was written. */
export class InvalidInputError extends DeepRecallError {
    /** @param {string} message */
    constructor(message: string);
}
/** No such object for this user. */
export class NotFoundError extends DeepRecallError {
    /** @param {string} message */
    constructor(message: string);
}
/** Model files are missing or broken. */
export class ModelError extends DeepRecallError {
    /** @param {string} message */
    constructor(message: string);
}
/** A backing service (database, model worker, remote provider) is down or overloaded. */
export class UnavailableError extends DeepRecallError {
    /** @param {string} message */
    constructor(message: string);
}
