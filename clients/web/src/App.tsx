import type { DeepRecall, User } from '@deep-recall/client';
import { useCallback, useEffect, useMemo, useRef, useState } from 'react';

import {
  type Auth,
  anonymousAs,
  clientFor,
  describe,
  initialAuth,
  isUnauthenticated,
  knownUsers,
  saveAuth,
} from './auth';
import { ChatView } from './Chat';
import { MemoryBrowser } from './Memories';

type View = 'chat' | 'memories';

/** The page: sign-in (or anonymous development mode), then chat and the memory browser. */
export function App() {
  const [auth, setAuth] = useState<Auth | null | undefined>(undefined);
  const [startError, setStartError] = useState<string | null>(null);

  const start = useCallback(() => {
    setStartError(null);
    initialAuth()
      .then(setAuth)
      .catch((e: unknown) => setStartError(describe(e)));
  }, []);
  useEffect(start, [start]);

  const change = (next: Auth | null) => {
    saveAuth(next);
    setAuth(next);
  };

  if (startError !== null) {
    return (
      <main className="center">
        <h1>Deep Recall</h1>
        <p role="alert" className="error">
          Cannot reach the server: {startError}
        </p>
        <button type="button" onClick={start}>
          Try again
        </button>
      </main>
    );
  }
  if (auth === undefined) {
    return (
      <main className="center" aria-busy="true">
        <p className="muted">Connecting…</p>
      </main>
    );
  }
  if (auth === null) return <SignIn onSignIn={(token) => change({ kind: 'token', token })} />;
  return <Shell key={auth.kind === 'token' ? auth.token : auth.user} auth={auth} onChange={change} />;
}

function SignIn({ onSignIn, error }: { onSignIn: (token: string) => void; error?: string }) {
  const [token, setToken] = useState('');
  return (
    <main className="center">
      <h1>Deep Recall</h1>
      <form
        className="signin"
        onSubmit={(e) => {
          e.preventDefault();
          if (token.trim()) onSignIn(token.trim());
        }}
      >
        <label htmlFor="token">Access token</label>
        <input
          id="token"
          type="password"
          autoComplete="off"
          value={token}
          onChange={(e) => setToken(e.target.value)}
          placeholder="a JWT or an API key"
          autoFocus
        />
        {error && (
          <p role="alert" className="error">
            {error}
          </p>
        )}
        <button type="submit" disabled={!token.trim()}>
          Sign in
        </button>
      </form>
    </main>
  );
}

function Shell({ auth, onChange }: { auth: Auth; onChange: (a: Auth | null) => void }) {
  const client: DeepRecall = useMemo(() => clientFor(auth), [auth]);
  useEffect(() => () => void client.close(), [client]);
  const [me, setMe] = useState<User | null>(null);
  const [authError, setAuthError] = useState<string | null>(null);
  const [view, setView] = useState<View>('chat');
  const [notice, setNotice] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  // Bumped when the user's data changes wholesale ("forget me"), to reload every view.
  const [generation, setGeneration] = useState(0);

  useEffect(() => {
    client
      .me()
      .then(setMe)
      // Only a token the server refuses asks for another; the rest (the server restarting,
      // a rate limit) is an error to show, and the chat stays.
      .catch((e: unknown) => (isUnauthenticated(e) ? setAuthError : setError)(describe(e)));
  }, [client, generation]);

  // What the views report: a token that stops being accepted (it expired) asks for another;
  // anything else is shown above the view.
  const failed = useCallback(
    (e: unknown) =>
      (isUnauthenticated(e) && auth.kind === 'token' ? setAuthError : setError)(describe(e)),
    [auth.kind],
  );

  if (authError !== null && auth.kind === 'token') {
    return (
      <SignIn
        error={`That token was not accepted (${authError}).`}
        onSignIn={(token) => {
          setAuthError(null);
          onChange({ kind: 'token', token });
        }}
      />
    );
  }

  const user = auth.kind === 'token' ? (me?.id ?? '…') : auth.user;
  return (
    <div className="shell">
      <header className="topbar">
        <span className="brand">Deep Recall</span>
        <nav aria-label="Views" className="tabs">
          <button type="button" aria-pressed={view === 'chat'} onClick={() => setView('chat')}>
            Chat
          </button>
          <button
            type="button"
            aria-pressed={view === 'memories'}
            onClick={() => setView('memories')}
          >
            Memories
          </button>
        </nav>
        <div className="account">
          {auth.kind === 'anonymous' ? (
            <UserSwitcher user={auth.user} onSwitch={(u) => onChange({ kind: 'anonymous', user: u })} />
          ) : (
            <>
              <span data-testid="current-user">{user}</span>
              <button type="button" onClick={() => onChange(null)}>
                Sign out
              </button>
            </>
          )}
          <DataRights
            client={client}
            user={user}
            onNotice={setNotice}
            onError={failed}
            onForgotten={() => setGeneration((g) => g + 1)}
          />
        </div>
      </header>
      {(notice || error) && (
        <div className={error ? 'banner error' : 'banner'} role={error ? 'alert' : 'status'}>
          <span>{error ?? notice}</span>
          <button
            type="button"
            aria-label="Dismiss"
            onClick={() => {
              setNotice(null);
              setError(null);
            }}
          >
            ×
          </button>
        </div>
      )}
      {view === 'chat' ? (
        <ChatView key={generation} client={client} onError={failed} />
      ) : (
        <MemoryBrowser key={generation} client={client} onError={failed} />
      )}
    </div>
  );
}

function UserSwitcher({ user, onSwitch }: { user: string; onSwitch: (user: string) => void }) {
  const [draft, setDraft] = useState(user);
  const [error, setError] = useState<string | null>(null);
  const [checking, setChecking] = useState(false);
  const users = knownUsers();
  // A name is switched to (and saved) only once the server takes it: one it refuses would
  // otherwise be where the page starts next time.
  const submit = async (next: string) => {
    setChecking(true);
    setError(null);
    try {
      onSwitch((await anonymousAs(next)).user);
    } catch (e) {
      setError(`That user name was not accepted (${describe(e)}).`);
    } finally {
      setChecking(false);
    }
  };
  return (
    <form
      className="switcher"
      onSubmit={(e) => {
        e.preventDefault();
        const next = draft.trim();
        if (next && next !== user) void submit(next);
      }}
    >
      <label htmlFor="user" className="muted">
        User
      </label>
      <input
        id="user"
        data-testid="user-input"
        list="known-users"
        value={draft}
        onChange={(e) => {
          setDraft(e.target.value);
          setError(null);
        }}
        size={10}
      />
      <datalist id="known-users">
        {users.map((u) => (
          <option key={u} value={u} />
        ))}
      </datalist>
      <button type="submit" disabled={checking || !draft.trim() || draft.trim() === user}>
        Switch
      </button>
      {error !== null && (
        <p role="alert" className="error" data-testid="user-error">
          {error}
        </p>
      )}
    </form>
  );
}

function DataRights({
  client,
  user,
  onNotice,
  onError,
  onForgotten,
}: {
  client: DeepRecall;
  user: string;
  onNotice: (s: string) => void;
  onError: (e: unknown) => void;
  onForgotten: () => void;
}) {
  const dialog = useRef<HTMLDialogElement>(null);
  const [busy, setBusy] = useState(false);

  const exportData = async () => {
    setBusy(true);
    try {
      const data = await client.exportMyData();
      const blob = new Blob([JSON.stringify(data, null, 2)], { type: 'application/json' });
      const link = document.createElement('a');
      link.href = URL.createObjectURL(blob);
      link.download = `deep-recall-${user}.json`;
      link.click();
      URL.revokeObjectURL(link.href);
      onNotice('Your data was exported.');
    } catch (e) {
      onError(e);
    } finally {
      setBusy(false);
    }
  };

  const forget = async () => {
    dialog.current?.close();
    setBusy(true);
    try {
      const report = await client.deleteMyData();
      onNotice(
        `Forgotten: ${report.sessions} sessions, ${report.messages} messages, ${report.memories} memories.`,
      );
      onForgotten();
    } catch (e) {
      onError(e);
    } finally {
      setBusy(false);
    }
  };

  return (
    <>
      <button type="button" onClick={() => void exportData()} disabled={busy}>
        Export
      </button>
      <button type="button" className="danger" onClick={() => dialog.current?.showModal()} disabled={busy}>
        Forget me
      </button>
      <dialog ref={dialog} aria-labelledby="forget-title">
        <h2 id="forget-title">Forget everything about {user}?</h2>
        <p>Every session, message and memory is deleted at once, for good.</p>
        <div className="actions">
          <button type="button" autoFocus onClick={() => dialog.current?.close()}>
            Cancel
          </button>
          <button type="button" className="danger" onClick={() => void forget()}>
            Delete everything
          </button>
        </div>
      </dialog>
    </>
  );
}
