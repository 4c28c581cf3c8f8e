// @ts-check
// Builds the native addon with cargo and puts it beside this file as deep-recall.node; `npm
// install` runs it. DEEP_RECALL_NODE_PROFILE picks the cargo profile (release by default; the
// test script uses dev, to share its build) and DEEP_RECALL_NODE_FEATURES adds cargo features
// (comma-separated; the test script's `workspace-features` shares its compiled dependencies).
'use strict'

const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const profile = process.env.DEEP_RECALL_NODE_PROFILE || 'release'
const features = process.env.DEEP_RECALL_NODE_FEATURES
const args = ['build', '--locked', '-p', 'recall-node', '--profile', profile]
if (features) {
  args.push('--features', features)
}
execFileSync('cargo', args, {
  cwd: __dirname,
  stdio: 'inherit',
})
const metadata = JSON.parse(
  execFileSync('cargo', ['metadata', '--format-version', '1', '--no-deps'], {
    cwd: __dirname,
    encoding: 'utf8',
  }),
)
const dir = path.join(metadata.target_directory, profile === 'dev' ? 'debug' : profile)
const file = {
  linux: 'librecall_node.so',
  darwin: 'librecall_node.dylib',
  win32: 'recall_node.dll',
}[/** @type {string} */ (process.platform)]
if (!file) {
  throw new Error(`deep-recall: no build recipe for ${process.platform}`)
}
fs.copyFileSync(path.join(dir, file), path.join(__dirname, 'deep-recall.node'))
