/**
 * `@deep-recall/client`: the TypeScript SDK of a Deep Recall server. See README.md.
 * @packageDocumentation
 */
export {
  DeepRecall,
  type AddMemoryOptions,
  type ChatOptions,
  type DeepMemoryGenerateOptions,
  type DeepMemoryTrainOptions,
  type DeepRecallOptions,
  type PageOptions,
  type SearchOptions,
  type SessionOptions,
  type WriteMemoryKeysOptions,
} from './client.js';
export { DeepRecallError, type ErrorCode } from './errors.js';
export type {
  ChatChunk,
  ChatDelta,
  ChatFinal,
  ContextMemory,
  DeepMemoryPair,
  DeepMemoryStatus,
  DeletionReport,
  FinishReason,
  Job,
  JobKind,
  JobStatus,
  Latency,
  Memory,
  MemoryAction,
  MemoryEvent,
  MemoryFilter,
  MemoryKeysStatus,
  MemoryKind,
  Message,
  MetadataCondition,
  MetadataOp,
  NewMessage,
  RecallFigures,
  Role,
  SearchHit,
  SearchMode,
  Session,
  Usage,
  User,
} from './types.js';
