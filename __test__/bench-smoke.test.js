'use strict'

// A short run of `npm run bench`: every part runs against real Redis and a local CloudFront and prints its row. The
// speed targets are the full benchmark's business, not a test's.

const { it } = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const { spawnSync } = require('node:child_process')

it('npm run bench -- --smoke prints the whole table', () => {
  const res = spawnSync(process.execPath, [path.join(__dirname, '..', 'bench', 'index.js'), '--smoke'], {
    encoding: 'utf8',
    timeout: 180000
  })
  assert.equal(res.status, 0, res.stderr)
  for (const row of [
    /storeUrl calls\/s, Zipf/,
    /storeUrl calls\/s, all-unique/,
    /Redis commands per 1M calls/,
    /Express GET requests\/s, with `middleware\(\)`/,
    /Control: Express GET requests\/s/,
    /sendInvalidation, 10,000 URLs/
  ]) {
    assert.match(res.stdout, row)
  }
})
