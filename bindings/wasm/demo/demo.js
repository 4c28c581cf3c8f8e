// The demo: memories embedded and indexed in the page, kept in IndexedDB across reloads.
// Nothing leaves the page; the model files are served beside it (under /models/).
import init, { Embedder, MemoryIndex } from '../pkg/web/recall_wasm.js'

const USER = 'me'
const MODEL = '/models/all-MiniLM-L6-v2'
const $ = (id) => document.getElementById(id)

function database() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open('deep-recall-demo', 1)
    req.onupgradeneeded = () => req.result.createObjectStore('index')
    req.onsuccess = () => resolve(req.result)
    req.onerror = () => reject(req.error)
  })
}

async function load(db) {
  return new Promise((resolve, reject) => {
    const req = db.transaction('index').objectStore('index').get('main')
    req.onsuccess = () => resolve(req.result)
    req.onerror = () => reject(req.error)
  })
}

async function save(db, bytes) {
  return new Promise((resolve, reject) => {
    const tx = db.transaction('index', 'readwrite')
    tx.objectStore('index').put(bytes, 'main')
    tx.oncomplete = () => resolve()
    tx.onerror = () => reject(tx.error)
  })
}

async function fetchText(path) {
  const r = await fetch(path)
  if (!r.ok) throw new Error(`${path}: ${r.status}`)
  return r.text()
}

async function main() {
  await init()
  const [config, tokenizer, weights] = await Promise.all([
    fetchText(`${MODEL}/config.json`),
    fetchText(`${MODEL}/tokenizer.json`),
    fetch(`${MODEL}/model.safetensors`).then((r) => r.arrayBuffer()),
  ])
  const embedder = new Embedder(config, tokenizer, new Uint8Array(weights))
  const db = await database()
  const saved = await load(db)
  let index = saved ? MemoryIndex.fromBytes(saved) : new MemoryIndex()
  const ready = () => {
    $('status').textContent = `Ready: ${index.count(USER)} memories.`
  }
  for (const id of ['memory', 'add', 'query', 'search']) $(id).disabled = false
  ready()

  $('add-form').addEventListener('submit', async (e) => {
    e.preventDefault()
    const text = $('memory').value.trim()
    if (!text) return
    try {
      index.add(USER, index.count(USER) + 1, text, embedder.embed(text), Date.now())
      await save(db, index.toBytes())
      $('memory').value = ''
      ready()
    } catch (err) {
      $('status').textContent = `Not remembered: ${err.message} (${err.code})`
    }
  })

  $('search-form').addEventListener('submit', (e) => {
    e.preventDefault()
    const query = $('query').value.trim()
    if (!query) return
    const list = $('results')
    list.replaceChildren()
    for (const hit of index.search(USER, query, embedder.embed(query), 5)) {
      const li = document.createElement('li')
      const score = document.createElement('span')
      score.className = 'score'
      score.textContent = hit.score.toFixed(3)
      li.append(score, hit.text)
      list.append(li)
    }
    $('status').textContent = `${list.children.length} results.`
  })
}

main().catch((err) => {
  $('status').textContent = `Failed: ${err.message}`
})
