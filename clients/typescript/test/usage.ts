// Type-checked by `npm run typecheck` (strict) against the built declarations, as a user's
// TypeScript project sees them: not run.
import { DeepRecall, DeepRecallError, type ChatFinal, type SearchHit } from '@deep-recall/client';

export async function usage(token: string): Promise<string> {
  const dr = new DeepRecall({ url: 'http://localhost:8080', getToken: async () => token });
  await dr.addMessages('s1', [{ role: 'user', content: 'I live in Lisbon.', tags: ['home'] }]);
  const hits: SearchHit[] = await dr.search('Where do I live?', { topK: 3, mode: 'hybrid' });
  const kind: 'message' | 'fact' | 'persona' | 'summary' | 'key' = hits[0]!.memory.kind;
  let final: ChatFinal | undefined;
  let text = '';
  for await (const chunk of dr.chat('s2', 'Where do I live?', { maxTokens: 32 })) {
    if ('delta' in chunk) text += chunk.delta;
    else final = chunk;
  }
  for await (const session of dr.sessions()) text += session.id;
  try {
    await dr.deleteMemory('42');
  } catch (e) {
    if (e instanceof DeepRecallError && e.code === 'NOT_FOUND') text += e.message;
  }
  await dr.close();
  return `${kind} ${text} ${final?.finishReason ?? ''} ${final?.usage.totalTokens ?? 0}`;
}
