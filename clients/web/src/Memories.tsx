import type { DeepRecall, Memory } from '@deep-recall/client';
import { useCallback, useEffect, useRef, useState } from 'react';

import { formatDate } from './Chat';

interface Row {
  memory: Memory;
  score?: number;
}

const PAGE = 50;

/** Every memory, newest first, or what a search finds; each can be deleted. */
export function MemoryBrowser({
  client,
  onError,
}: {
  client: DeepRecall;
  onError: (e: unknown) => void;
}) {
  const [query, setQuery] = useState('');
  const [searched, setSearched] = useState<string | null>(null);
  const [rows, setRows] = useState<Row[] | null>(null);
  const [more, setMore] = useState(false);
  const [busy, setBusy] = useState(false);
  const pages = useRef<AsyncGenerator<Memory> | null>(null);

  const nextPage = useCallback(
    async (reset: boolean, shown?: Set<string>) => {
      if (reset || pages.current === null) pages.current = client.memories({ pageSize: PAGE });
      const it = pages.current;
      const page: Row[] = [];
      let done = false;
      while (page.length < PAGE) {
        const n = await it.next();
        if (n.done) {
          done = true;
          break;
        }
        if (shown?.has(n.value.id)) continue;
        page.push({ memory: n.value });
      }
      setRows((r) => (reset || r === null ? page : [...r, ...page]));
      setMore(!done);
    },
    [client],
  );

  const load = useCallback(
    async (q: string) => {
      setBusy(true);
      try {
        if (q) {
          const hits = await client.search(q, { topK: 20 });
          setRows(hits.map((h) => ({ memory: h.memory, score: h.score })));
          setMore(false);
          setSearched(q);
        } else {
          await nextPage(true);
          setSearched(null);
        }
      } catch (e) {
        pages.current = null;
        onError(e);
        setRows((r) => r ?? []);
      } finally {
        setBusy(false);
      }
    },
    [client, nextPage, onError],
  );

  useEffect(() => {
    void load('');
  }, [load]);

  const loadMore = async () => {
    setBusy(true);
    try {
      // After a page failed, the listing starts again, past the memories already shown (a
      // failed listing has ended, and would read as the end of the list).
      const shown =
        pages.current === null ? new Set((rows ?? []).map((r) => r.memory.id)) : undefined;
      await nextPage(false, shown);
    } catch (e) {
      pages.current = null;
      onError(e);
    } finally {
      setBusy(false);
    }
  };

  const remove = async (id: string) => {
    try {
      await client.deleteMemory(id);
      setRows((r) => r?.filter((x) => x.memory.id !== id) ?? null);
    } catch (e) {
      onError(e);
    }
  };

  return (
    <section className="memories" aria-label="Memories">
      <form
        className="search"
        role="search"
        onSubmit={(e) => {
          e.preventDefault();
          void load(query.trim());
        }}
      >
        <input
          type="search"
          data-testid="memory-search"
          aria-label="Search memories"
          placeholder="Search your memories"
          value={query}
          onChange={(e) => setQuery(e.target.value)}
        />
        <button type="submit" className="primary" disabled={busy}>
          Search
        </button>
        {searched !== null && (
          <button
            type="button"
            onClick={() => {
              setQuery('');
              void load('');
            }}
          >
            Show all
          </button>
        )}
      </form>
      {rows === null || (busy && rows.length === 0) ? (
        <p className="muted" aria-busy="true">
          Loading memories…
        </p>
      ) : rows.length === 0 ? (
        <p className="muted">{searched !== null ? 'Nothing found.' : 'No memories yet.'}</p>
      ) : (
        <ul className="memory-list" data-testid="memories">
          {rows.map(({ memory: m, score }) => (
            <li key={m.id} data-testid="memory-item">
              <div>
                <p>{m.content}</p>
                <small className="muted">
                  {score !== undefined && `score ${score.toFixed(3)} · `}
                  {m.kind}
                  {m.role ? ` · ${m.role}` : ''}
                  {m.session ? ` · ${m.session}` : ''} · {formatDate(m.createdAt)}
                </small>
              </div>
              <button
                type="button"
                className="danger"
                aria-label={`Delete memory: ${m.content.slice(0, 40)}`}
                onClick={() => void remove(m.id)}
              >
                Delete
              </button>
            </li>
          ))}
        </ul>
      )}
      {more && searched === null && (
        <button type="button" onClick={() => void loadMore()} disabled={busy}>
          Load more
        </button>
      )}
    </section>
  );
}
