// The Node package's side of `cargo bench --bench bindings`: hybrid searches on an existing
// embedded store, timed per call; prints {"p50", "p95"} in milliseconds.
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { parseArgs } from 'node:util'

const require = createRequire(import.meta.url)
const { Memory } = require('../bindings/node/index.js')

const { values } = parseArgs({
  options: { 'data-dir': { type: 'string' }, 'models-dir': { type: 'string' }, queries: { type: 'string' } },
})
const queries = JSON.parse(readFileSync(values.queries, 'utf8'))
const memory = await Memory.open({
  dataDir: values['data-dir'],
  modelsDir: values['models-dir'],
  device: 'cpu',
})
await memory.search('bench', 'warm up')
const times = []
for (const q of queries) {
  const started = process.hrtime.bigint()
  await memory.search('bench', q)
  times.push(Number(process.hrtime.bigint() - started) / 1e6)
}
times.sort((a, b) => a - b)
const pick = (p) => times[Math.round((times.length - 1) * p)]
console.log(JSON.stringify({ p50: pick(0.5), p95: pick(0.95) }))
