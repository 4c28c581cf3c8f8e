// How a TypeScript program sees the package (checked by `tsc -p tsconfig.usage.json`, strict).
import { InvalidInputError, Memory } from 'deep-recall'
import type { ChatResult, Hit, Session } from 'deep-recall'

export async function tour(): Promise<string> {
  const memory: Memory = await Memory.open({ dataDir: 'data', modelsDir: 'models' })
  const ids: number[] = await memory.addMessages('alice', 's1', [
    { role: 'user', content: 'I moved to Lisbon.', ts: new Date(), tags: ['home'] },
  ])
  const hits: Hit[] = await memory.search('alice', 'Where does she live?', { topK: 3, mode: 'vector' })
  const when: Date = hits[0].createdAt
  const session: Session = await memory.createSession('alice', 's2', { persona: 'You are Moss.' })
  const persona: string | null = session.persona
  void persona
  let result: ChatResult | undefined
  for await (const part of memory.chatStream('alice', 's2', 'Hi', { maxTokens: 8 })) {
    if ('delta' in part) {
      const text: string = part.delta
      void text
    } else {
      result = part.result
    }
  }
  try {
    await memory.search('alice', '')
  } catch (err) {
    if (err instanceof InvalidInputError) {
      const code: string = err.code
      void code
    }
  }
  return `${ids.length} ${when.toISOString()} ${result?.usage.totalTokens ?? 0}`
}
