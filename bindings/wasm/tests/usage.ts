// A strict TypeScript program against the package's generated declarations
// (pkg/web/recall_wasm.d.ts): type-checked by `npm test` (tsc -p tsconfig.usage.json), never run.
import init, {
  Embedder,
  MemoryIndex,
  PromptBuilder,
  type Prompt,
  type PromptOptions,
  type AddOptions,
  type IndexedMemory,
  type MemoryHit,
  type SearchFilter,
} from 'deep-recall-wasm'

export async function remember(
  config: string,
  tokenizer: string,
  weights: Uint8Array,
): Promise<string[]> {
  await init()
  const embedder = new Embedder(config, tokenizer, weights)
  const index = new MemoryIndex()
  const options: AddOptions = {
    session: 'trip',
    tags: ['todo'],
    metadata: { priority: 3, source: { app: 'notes' } },
    expiresAtMs: Date.now() + 86_400_000,
  }
  const text = 'Book the flights to Rome'
  index.add('me', 1, text, embedder.embed(text), Date.now(), options)
  index.add('me', 2, 'Flights booked for June', embedder.embed('Flights booked for June'), Date.now(), {
    supersedes: 1,
  })
  const filter: SearchFilter = {
    tags: ['todo'],
    metadata: [{ key: 'priority', op: 'gte', value: 2 }],
    asOfMs: Date.now(),
    includeSuperseded: false,
  }
  const hits: MemoryHit[] = index.search('me', 'Rome?', embedder.embed('Rome?'), 5, 'hybrid', filter)
  const first: IndexedMemory | undefined = index.get('me', 1)
  const chain: IndexedMemory[] = index.history('me', 2)
  const purged: number = index.purgeExpired()
  const superseded: number | null = first?.supersededBy ?? null
  return [
    ...hits.map((h) => `${h.id} ${h.score.toFixed(3)} ${h.text} ${h.session ?? ''} ${h.tags.join(',')}`),
    `${chain.length} ${purged} ${superseded}`,
  ]
}

export function promptFor(
  index: MemoryIndex,
  embedder: Embedder,
  chatTokenizer: string | undefined,
  message: string,
): { role: string; content: string }[] {
  const prompts = new PromptBuilder(chatTokenizer)
  const options: PromptOptions = {
    system: 'You are a kind assistant.',
    persona: 'You are Ada. You like plants.',
    conversation: [{ role: 'user', content: 'Hi!' }],
    topK: 5,
    mode: 'hybrid',
    filter: { tags: ['todo'] },
    budget: { contextWindow: 4096, responseReserve: 512, memoryShare: 0.3 },
  }
  const prompt: Prompt = prompts.build(index, 'me', message, embedder.embed(message), options)
  const fitted: number[] = prompt.report.memories.included
  const tokens: number = prompts.count(message) + fitted.length
  return [...prompt.messages, { role: 'note', content: `${tokens} ${prompt.memories.length}` }]
}
