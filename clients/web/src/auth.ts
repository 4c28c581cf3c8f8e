import { DeepRecall, DeepRecallError } from '@deep-recall/client';

/** Who the page acts as: a bearer token, or (anonymous development mode) a user name. */
export type Auth = { kind: 'token'; token: string } | { kind: 'anonymous'; user: string };

const TOKEN_KEY = 'deep-recall.token';
const USER_KEY = 'deep-recall.user';
const USERS_KEY = 'deep-recall.users';
export const DEFAULT_USER = 'demo';

/** The API is the server that served the page. */
const url = window.location.origin;

export function clientFor(auth: Auth): DeepRecall {
  return auth.kind === 'token'
    ? new DeepRecall({ url, token: auth.token })
    : new DeepRecall({ url, user: auth.user });
}

export function savedToken(): string | null {
  return localStorage.getItem(TOKEN_KEY);
}

export function saveAuth(auth: Auth | null): void {
  if (auth === null || auth.kind === 'anonymous') localStorage.removeItem(TOKEN_KEY);
  if (auth?.kind === 'token') localStorage.setItem(TOKEN_KEY, auth.token);
  if (auth?.kind === 'anonymous') {
    localStorage.setItem(USER_KEY, auth.user);
    const users = new Set(knownUsers());
    users.add(auth.user);
    localStorage.setItem(USERS_KEY, JSON.stringify([...users].slice(-20)));
  }
}

export function savedUser(): string {
  return localStorage.getItem(USER_KEY) || DEFAULT_USER;
}

export function knownUsers(): string[] {
  try {
    const list: unknown = JSON.parse(localStorage.getItem(USERS_KEY) ?? '[]');
    return Array.isArray(list) ? list.filter((u): u is string => typeof u === 'string') : [];
  } catch {
    return [];
  }
}

/**
 * How the page starts: the saved token when there is one; else anonymous access when the
 * server allows it (development mode), as the saved user or, when the server refuses that
 * name, the default one; else `null`: the sign-in form.
 */
export async function initialAuth(): Promise<Auth | null> {
  const token = savedToken();
  if (token) return { kind: 'token', token };
  const saved = savedUser();
  try {
    return await anonymousAs(saved);
  } catch (e) {
    if (saved === DEFAULT_USER) return refused(e);
    // Only a name the server refuses falls back to the default user; any other failure
    // (the network, a rate limit) is shown, rather than acting as someone else.
    if (!isRefusal(e)) throw e;
  }
  try {
    return await anonymousAs(DEFAULT_USER);
  } catch (e) {
    return refused(e);
  }
}

/** Anonymous access as `user`, once the server has taken that name (it throws if not). */
export async function anonymousAs(user: string): Promise<Extract<Auth, { kind: 'anonymous' }>> {
  const auth = { kind: 'anonymous', user } as const;
  const probe = clientFor(auth);
  try {
    await probe.me();
  } finally {
    void probe.close();
  }
  return auth;
}

/** Whether `e` says the credentials (or the user name) were refused. */
export function isRefusal(e: unknown): boolean {
  return (
    e instanceof DeepRecallError &&
    ['UNAUTHENTICATED', 'BAD_INPUT', 'FORBIDDEN'].includes(e.code)
  );
}

/** Whether `e` says the credentials were not accepted (a bad or expired token). */
export function isUnauthenticated(e: unknown): boolean {
  return e instanceof DeepRecallError && e.code === 'UNAUTHENTICATED';
}

/** `null` (the sign-in form) when anonymous access is off; any other error is thrown. */
function refused(e: unknown): null {
  if (e instanceof DeepRecallError && e.code === 'UNAUTHENTICATED') return null;
  throw e;
}

/** A message for an error, with its code. */
export function describe(e: unknown): string {
  if (e instanceof DeepRecallError) return `${e.code}: ${e.message}`;
  return e instanceof Error ? e.message : String(e);
}
