// Builds the package: the wasm module (cargo, release by default; DEEP_RECALL_WASM_PROFILE
// picks another profile) and its JavaScript bindings for the browser (pkg/web) and Node
// (pkg/node) with wasm-bindgen-cli (the version equal to the crate's wasm-bindgen).
import { execFileSync } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const profile = process.env.DEEP_RECALL_WASM_PROFILE || 'release'
const target = 'wasm32-unknown-unknown'
execFileSync(
  'cargo',
  ['build', '--locked', '-p', 'recall-wasm', '--target', target, '--profile', profile],
  { cwd: here, stdio: 'inherit' },
)
const metadata = JSON.parse(
  execFileSync('cargo', ['metadata', '--format-version', '1', '--no-deps'], {
    cwd: here,
    encoding: 'utf8',
  }),
)
const wasm = path.join(
  metadata.target_directory,
  target,
  profile === 'dev' ? 'debug' : profile,
  'recall_wasm.wasm',
)
for (const [kind, dir] of [
  ['web', 'pkg/web'],
  ['nodejs', 'pkg/node'],
]) {
  execFileSync('wasm-bindgen', ['--target', kind, '--out-dir', path.join(here, dir), wasm], {
    stdio: 'inherit',
  })
}
