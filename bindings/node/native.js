// @ts-check
// Loads the native addon that `npm install` built (build.js). Private to the package.
'use strict'

const path = require('node:path')

/** @type {any} */
let addon
try {
  addon = require(path.join(__dirname, 'deep-recall.node'))
} catch (err) {
  throw new Error(
    `deep-recall: the native addon is missing or broken (${err instanceof Error ? err.message : err}); ` +
      'run `npm install` in bindings/node (it builds it with cargo)',
  )
}

module.exports = addon
