'use strict'

// index.d.ts against the README's usage: __test__/types/usage.cts (CommonJS) and usage.mts (ES module) must
// type-check with TypeScript in strict mode, including their `@ts-expect-error` lines (wrong usage the types refuse).

const { test } = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const { spawnSync } = require('node:child_process')

test('index.d.ts types what the README shows, and refuses wrong usage', () => {
  const tsc = require.resolve('typescript/bin/tsc')
  const project = path.join(__dirname, 'types', 'tsconfig.json')
  const run = spawnSync(process.execPath, [tsc, '-p', project], { encoding: 'utf8', timeout: 120_000 })
  assert.equal(run.error, undefined)
  assert.equal(run.status, 0, `tsc found errors:\n${run.stdout}${run.stderr}`)
})

test('the ES module entry has the named exports index.d.ts declares, the CommonJS ones', async () => {
  const esm = await import('../index.mjs')
  const cjs = require('..')
  assert.equal(esm.default, cjs)
  for (const name of ['Tracker', 'Store', 'MAX_URL_LENGTH', 'createTracker']) {
    assert.equal(esm[name], name === 'createTracker' ? cjs : cjs[name], name)
  }
  assert.equal(typeof esm.invalidateS3Event, 'function')
  assert.equal(typeof esm.findDistributionByOrigin, 'function')
})
