/** The stable codes of a failure: the server's `extensions.code`, or `NETWORK`. */
export type ErrorCode =
  | 'UNAUTHENTICATED'
  | 'FORBIDDEN'
  | 'NOT_FOUND'
  | 'BAD_INPUT'
  | 'RATE_LIMITED'
  | 'UNAVAILABLE'
  | 'TIMEOUT'
  | 'INTERNAL'
  | 'NETWORK';

const CODES: ReadonlySet<string> = new Set<ErrorCode>([
  'UNAUTHENTICATED',
  'FORBIDDEN',
  'NOT_FOUND',
  'BAD_INPUT',
  'RATE_LIMITED',
  'UNAVAILABLE',
  'TIMEOUT',
  'INTERNAL',
  'NETWORK',
]);

/** Every failure of the SDK. */
export class DeepRecallError extends Error {
  /** What went wrong, stable across versions. */
  readonly code: ErrorCode;
  /** Seconds to wait before trying again, when the server said. */
  readonly retryAfter: number | undefined;
  /** The HTTP status, when there was an HTTP answer. */
  readonly status: number | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    options: { retryAfter?: number | undefined; status?: number | undefined; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'DeepRecallError';
    this.code = code;
    this.retryAfter = options.retryAfter;
    this.status = options.status;
  }
}

/** A GraphQL error as the server formats it. */
export interface FormattedError {
  message: string;
  extensions?: { code?: unknown; retryAfter?: unknown } | null | undefined;
}

function statusCode(status: number | undefined): ErrorCode {
  switch (status) {
    case 401:
      return 'UNAUTHENTICATED';
    case 403:
      return 'FORBIDDEN';
    case 404:
      return 'NOT_FOUND';
    case 429:
      return 'RATE_LIMITED';
    case 502:
    case 503:
      return 'UNAVAILABLE';
    case 504:
      return 'TIMEOUT';
    case undefined:
      return 'INTERNAL';
    default:
      return status >= 500 ? 'INTERNAL' : 'BAD_INPUT';
  }
}

/**
 * The error for a GraphQL `errors` array: the first error's `extensions.code`; an error without
 * one (the server rejected the document itself) is `BAD_INPUT`, or what the HTTP status says.
 */
export function fromGraphQLErrors(
  errors: readonly FormattedError[],
  status?: number,
  retryAfterHeader?: number,
): DeepRecallError {
  const first = errors[0];
  const raw = first?.extensions?.code;
  const code: ErrorCode =
    typeof raw === 'string' && CODES.has(raw)
      ? (raw as ErrorCode)
      : status === undefined || status === 200 || status === 400
        ? 'BAD_INPUT'
        : statusCode(status);
  const retry = first?.extensions?.retryAfter;
  const retryAfter = typeof retry === 'number' ? retry : retryAfterHeader;
  const message = errors.map((e) => e.message).join('; ') || code;
  return new DeepRecallError(code, message, { retryAfter, status });
}

/** The error for whatever a subscription failed with. */
export function fromSubscriptionFailure(failure: unknown): DeepRecallError {
  if (failure instanceof DeepRecallError) return failure;
  if (Array.isArray(failure)) return fromGraphQLErrors(failure as FormattedError[]);
  // A closed socket: graphql-ws rejects with the CloseEvent. The server names the code at the
  // start of the reason (`UNAUTHENTICATED: invalid credentials: ...`).
  if (typeof failure === 'object' && failure !== null && 'code' in failure && 'reason' in failure) {
    const { code, reason } = failure as { code: number; reason: string };
    const text = reason || `the connection closed (${code})`;
    // A rate limit's wait is in its text only ("...; retry in 2.5s"): a close frame has no
    // other place for it.
    const wait = /retry in (\d+(?:\.\d+)?)s/.exec(text)?.[1];
    const retryAfter = wait === undefined ? undefined : Number(wait);
    const named = /^([A-Z_]+): /.exec(text)?.[1];
    if (named !== undefined && CODES.has(named)) {
      return new DeepRecallError(named as ErrorCode, text.slice(named.length + 2), { retryAfter });
    }
    if (code === 4401 || code === 4403) return new DeepRecallError('UNAUTHENTICATED', text);
    if (code === 4429) return new DeepRecallError('RATE_LIMITED', text, { retryAfter });
    if (code === 4400) return new DeepRecallError('BAD_INPUT', text);
    return new DeepRecallError('NETWORK', text);
  }
  const message = failure instanceof Error ? failure.message : String(failure);
  return new DeepRecallError('NETWORK', message, { cause: failure });
}
