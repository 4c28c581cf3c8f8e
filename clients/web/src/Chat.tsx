import type { ContextMemory, DeepRecall, FinishReason, Session } from '@deep-recall/client';
import { useCallback, useEffect, useRef, useState } from 'react';


interface Turn {
  key: string;
  role: 'user' | 'assistant' | 'system';
  content: string;
  /** Memories the answer was given (answers written in this page only). */
  context?: ContextMemory[];
  streaming?: boolean;
  finishReason?: FinishReason | 'stopped' | 'failed';
}

const SESSIONS_SHOWN = 200;

/** A new session's id: its time (readable in the list) and a random suffix, so that two new
 * chats in the same second are two sessions. */
function newSessionId(): string {
  const d = new Date();
  const pad = (n: number) => String(n).padStart(2, '0');
  const suffix = Array.from(crypto.getRandomValues(new Uint8Array(3)), (b) =>
    b.toString(16).padStart(2, '0'),
  ).join('');
  return `chat-${d.getFullYear()}${pad(d.getMonth() + 1)}${pad(d.getDate())}-${pad(d.getHours())}${pad(d.getMinutes())}${pad(d.getSeconds())}-${suffix}`;
}

export function formatDate(iso: string): string {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

/** Sessions on the side, the conversation in the middle, the answer's memories beside it. */
export function ChatView({ client, onError }: { client: DeepRecall; onError: (e: unknown) => void }) {
  const [sessions, setSessions] = useState<Session[] | null>(null);
  const [session, setSession] = useState<string>(newSessionId);
  const [turns, setTurns] = useState<Turn[]>([]);
  const [loadingTurns, setLoadingTurns] = useState(false);
  const [selected, setSelected] = useState<string | null>(null);
  const [draft, setDraft] = useState('');
  const [streaming, setStreaming] = useState<AbortController | null>(null);
  const input = useRef<HTMLTextAreaElement>(null);
  const bottom = useRef<HTMLDivElement>(null);
  // Numbers each opening of a session: a load that finishes after another began (the user
  // clicked on) is dropped, so that one session's messages never show under another.
  const opening = useRef(0);

  const loadSessions = useCallback(async () => {
    try {
      const list: Session[] = [];
      for await (const s of client.sessions({ pageSize: 50 })) {
        list.push(s);
        if (list.length >= SESSIONS_SHOWN) break;
      }
      setSessions(list);
    } catch (e) {
      onError(e);
      // A list shown before stays (a failed refresh is not "no sessions").
      setSessions((s) => s ?? []);
    }
  }, [client, onError]);

  useEffect(() => {
    void loadSessions();
  }, [loadSessions]);

  const open = async (id: string) => {
    if (streaming) return;
    const mine = ++opening.current;
    setSession(id);
    setSelected(null);
    setTurns([]);
    setLoadingTurns(true);
    try {
      const loaded: Turn[] = [];
      for await (const m of client.messages(id)) {
        if (opening.current !== mine) return;
        loaded.push({ key: m.id, role: m.role, content: m.content });
      }
      if (opening.current === mine) setTurns(loaded);
    } catch (e) {
      if (opening.current === mine) onError(e);
    } finally {
      if (opening.current === mine) {
        setLoadingTurns(false);
        input.current?.focus();
      }
    }
  };

  const startNew = () => {
    if (streaming) return;
    opening.current++;
    setLoadingTurns(false);
    setSession(newSessionId());
    setTurns([]);
    setSelected(null);
    input.current?.focus();
  };

  const update = (key: string, change: (t: Turn) => Turn) =>
    setTurns((ts) => ts.map((t) => (t.key === key ? change(t) : t)));

  const send = async () => {
    const text = draft.trim();
    // Not while a session's messages load: they would replace the turn being sent.
    if (!text || streaming || loadingTurns) return;
    const controller = new AbortController();
    const stamp = `${Date.now()}`;
    const answerKey = `a-${stamp}`;
    setDraft('');
    setTurns((ts) => [
      ...ts,
      { key: `u-${stamp}`, role: 'user', content: text },
      { key: answerKey, role: 'assistant', content: '', streaming: true },
    ]);
    setSelected(answerKey);
    setStreaming(controller);
    let finished = false;
    let heard = false;
    try {
      for await (const chunk of client.chat(session, text, { signal: controller.signal })) {
        heard = true;
        if ('delta' in chunk) {
          update(answerKey, (t) => ({ ...t, content: t.content + chunk.delta }));
        } else {
          finished = true;
          update(answerKey, (t) => ({
            ...t,
            content: chunk.text,
            context: chunk.context,
            streaming: false,
            finishReason: chunk.finishReason,
          }));
        }
      }
      if (!finished) update(answerKey, (t) => ({ ...t, streaming: false, finishReason: 'stopped' }));
    } catch (e) {
      onError(e);
      update(answerKey, (t) => ({ ...t, streaming: false, finishReason: 'failed' }));
      // Refused before a word came back (a limit, the network): the message is given back
      // to the composer to send again, unless something new was typed meanwhile.
      if (!heard) setDraft((d) => (d.trim() ? d : text));
    } finally {
      setStreaming(null);
      void loadSessions();
      input.current?.focus();
    }
  };

  useEffect(() => {
    bottom.current?.scrollIntoView?.({ block: 'end' });
  }, [turns]);

  const answers = turns.filter((t) => t.role === 'assistant');
  const shown = turns.find((t) => t.key === selected) ?? answers[answers.length - 1];

  return (
    <div className="chat-layout">
      <aside className="sessions" aria-label="Sessions">
        <button type="button" className="primary" onClick={startNew} disabled={streaming !== null}>
          New chat
        </button>
        {sessions === null ? (
          <p className="muted" aria-busy="true">
            Loading sessions…
          </p>
        ) : sessions.length === 0 ? (
          <p className="muted">No sessions yet.</p>
        ) : (
          <ul data-testid="sessions">
            {sessions.map((s) => (
              <li key={s.id}>
                <button
                  type="button"
                  className="session"
                  aria-current={s.id === session}
                  onClick={() => void open(s.id)}
                  disabled={streaming !== null}
                >
                  <span>{s.title ?? s.id}</span>
                  <small className="muted">{formatDate(s.updatedAt)}</small>
                </button>
              </li>
            ))}
          </ul>
        )}
      </aside>

      <section className="conversation" aria-label={`Conversation ${session}`}>
        <div className="turns" aria-live="polite" data-testid="turns">
          {loadingTurns && <p className="muted">Loading messages…</p>}
          {!loadingTurns && turns.length === 0 && (
            <p className="muted empty">
              Say something. What you tell me is remembered, and comes back in later chats.
            </p>
          )}
          {turns.map((t) => (
            <article
              key={t.key}
              className={`turn ${t.role}${t.key === shown?.key ? ' selected' : ''}`}
              data-testid={t.role === 'assistant' ? 'answer' : 'question'}
              data-streaming={t.streaming ? 'true' : 'false'}
              onClick={() => t.role === 'assistant' && setSelected(t.key)}
            >
              <p>{t.content || (t.streaming ? '…' : '')}</p>
              {t.finishReason && t.finishReason !== 'stop' && (
                <small className="muted">
                  {t.finishReason === 'length' ? 'cut at the token limit' : t.finishReason}
                </small>
              )}
            </article>
          ))}
          <div ref={bottom} />
        </div>
        <form
          className="composer"
          onSubmit={(e) => {
            e.preventDefault();
            void send();
          }}
        >
          <textarea
            ref={input}
            data-testid="message"
            aria-label="Message"
            rows={2}
            value={draft}
            placeholder="Message (Enter sends, Shift+Enter for a new line, Esc stops)"
            onChange={(e) => setDraft(e.target.value)}
            onKeyDown={(e) => {
              // Enter that confirms an input method's composition (Japanese, Chinese) is
              // not a send.
              if (e.nativeEvent.isComposing || e.keyCode === 229) return;
              if (e.key === 'Enter' && !e.shiftKey) {
                e.preventDefault();
                void send();
              } else if (e.key === 'Escape' && streaming) {
                streaming.abort();
              }
            }}
            autoFocus
          />
          {streaming ? (
            <button type="button" className="danger" onClick={() => streaming.abort()}>
              Stop
            </button>
          ) : (
            <button type="submit" className="primary" disabled={!draft.trim() || loadingTurns}>
              Send
            </button>
          )}
        </form>
      </section>

      <aside className="context" aria-label="Memories used">
        <h2>Memories used</h2>
        {!shown ? (
          <p className="muted">The memories an answer was given show here.</p>
        ) : shown.streaming && !shown.context ? (
          <p className="muted" aria-busy="true">
            Answering…
          </p>
        ) : !shown.context ? (
          <p className="muted">Shown for answers given in this window.</p>
        ) : shown.context.length === 0 ? (
          <p className="muted">No memory was relevant.</p>
        ) : (
          <ol data-testid="context">
            {shown.context.map((c) => (
              <li key={c.memoryId} data-testid="context-item">
                <p>{c.content}</p>
                <small className="muted">
                  score {c.score.toFixed(3)} · {c.kind}
                  {c.session ? ` · ${c.session}` : ''} · {formatDate(c.createdAt)}
                </small>
              </li>
            ))}
          </ol>
        )}
      </aside>
    </div>
  );
}
