// Subscribes to `chat` with the npm graphql-ws client and prints every event as one JSON
// line, then {"complete": true}. Usage: node chat.mjs WS_URL TOKEN MESSAGE
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const [url, token, message] = process.argv.slice(2);
const client = createClient({
  url,
  webSocketImpl: WebSocket,
  connectionParams: { authorization: `Bearer ${token}` },
  retryAttempts: 0,
});
const query = `subscription($i: ChatInput!) {
  chat(input: $i) { messageId index delta done result { text finishReason usage { completionTokens } } }
}`;
try {
  const events = client.iterate({
    query,
    variables: { i: { session: 'npm', message, maxTokens: 24 } },
  });
  for await (const event of events) {
    console.log(JSON.stringify(event));
  }
  console.log(JSON.stringify({ complete: true }));
} catch (err) {
  console.log(JSON.stringify({ error: String(err && (err.reason || err.message || err)) }));
} finally {
  await client.dispose();
}
