// The wasm side of `cargo bench --bench bindings`: embeds texts one at a time with the wasm
// package (bindings/wasm/pkg/node, from `npm run build`); prints {"texts_per_s"}.
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import { parseArgs } from 'node:util'

const require = createRequire(import.meta.url)
const { Embedder } = require('../bindings/wasm/pkg/node/recall_wasm.js')

const { values } = parseArgs({ options: { 'models-dir': { type: 'string' }, texts: { type: 'string' } } })
const dir = path.join(values['models-dir'], 'all-MiniLM-L6-v2')
const embedder = new Embedder(
  readFileSync(path.join(dir, 'config.json'), 'utf8'),
  readFileSync(path.join(dir, 'tokenizer.json'), 'utf8'),
  readFileSync(path.join(dir, 'model.safetensors')),
)
const texts = JSON.parse(readFileSync(values.texts, 'utf8'))
embedder.embed(texts[0])
const started = process.hrtime.bigint()
for (const t of texts) embedder.embed(t)
const seconds = Number(process.hrtime.bigint() - started) / 1e9
console.log(JSON.stringify({ texts_per_s: texts.length / seconds }))
