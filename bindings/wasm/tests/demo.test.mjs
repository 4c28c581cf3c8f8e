// The demo page in headless Chromium (Debian's `chromium`, driven by playwright-core): memories
// typed into the page are embedded and indexed there, found by a question, and still there
// after a reload (IndexedDB). The page, the built package and the model files are served from
// a local HTTP server.
import assert from 'node:assert/strict'
import { createReadStream, existsSync, mkdtempSync, statSync } from 'node:fs'
import { createServer } from 'node:http'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { after, before, test } from 'node:test'
import { fileURLToPath } from 'node:url'

import { chromium } from 'playwright-core'

const here = path.dirname(fileURLToPath(import.meta.url))
const pkgRoot = path.resolve(here, '..')
const repo = path.resolve(pkgRoot, '../..')
const models = process.env.DEEP_RECALL_MODELS_DIR || path.join(repo, 'models')
const chromiumPath = process.env.DEEP_RECALL_CHROMIUM || '/usr/bin/chromium'

const TYPES = {
  '.html': 'text/html',
  '.js': 'text/javascript',
  '.wasm': 'application/wasm',
  '.json': 'application/json',
}

let server
let base
let browser

before(async () => {
  assert.ok(existsSync(path.join(pkgRoot, 'pkg/web/recall_wasm.js')), 'run `npm run build` first')
  server = createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost')
    const file = url.pathname.startsWith('/models/')
      ? path.join(models, url.pathname.slice('/models/'.length))
      : path.join(pkgRoot, url.pathname.endsWith('/') ? `${url.pathname}index.html` : url.pathname)
    const root = url.pathname.startsWith('/models/') ? models : pkgRoot
    if (!file.startsWith(root) || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404).end()
      return
    }
    res.writeHead(200, { 'content-type': TYPES[path.extname(file)] || 'application/octet-stream' })
    createReadStream(file).pipe(res)
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  base = `http://127.0.0.1:${server.address().port}`
  browser = await chromium.launchPersistentContext(mkdtempSync(path.join(tmpdir(), 'dr-chromium-')), {
    executablePath: chromiumPath,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  })
})

after(async () => {
  await browser?.close()
  server?.close()
})

async function ready(page) {
  await page.waitForFunction(
    () => /^Ready|^Failed/.test(document.getElementById('status').textContent),
    null,
    { timeout: 120_000 },
  )
  const status = await page.textContent('#status')
  assert.match(status, /^Ready/, status)
  return status
}

async function ask(page, question) {
  await page.fill('#query', question)
  await page.click('#search')
  await page.waitForFunction(() => / results\.$/.test(document.getElementById('status').textContent))
  return page.$$eval('#results li', (items) => items.map((li) => li.textContent))
}

test('memories typed into the page are found, and survive a reload', async () => {
  const page = await browser.newPage()
  const errors = []
  page.on('pageerror', (err) => errors.push(err.message))
  await page.goto(`${base}/demo/`)
  assert.equal(await ready(page), 'Ready: 0 memories.')
  const memories = [
    'We adopted a grey cat and named her Miso.',
    'My sister lives in Porto and works as a marine biologist.',
    'I am learning to play the cello on Sunday mornings.',
  ]
  for (const [i, memory] of memories.entries()) {
    await page.fill('#memory', memory)
    await page.click('#add')
    await page.waitForFunction(
      (n) => document.getElementById('status').textContent === `Ready: ${n} memories.`,
      i + 1,
      { timeout: 30_000 },
    )
  }
  const results = await ask(page, 'What is the name of our cat?')
  assert.match(results[0], /Miso/, results.join(' | '))
  assert.match(results[0], /^\d\.\d{3}/, 'each result shows its score')

  await page.reload()
  assert.equal(await ready(page), 'Ready: 3 memories.', 'the index came back from IndexedDB')
  const again = await ask(page, 'Which instrument am I learning?')
  assert.match(again[0], /cello/, again.join(' | '))
  await page.screenshot({ path: path.join(tmpdir(), 'deep-recall-wasm-demo.png') })
  assert.deepEqual(errors, [])
})
