'use strict'

// The examples, run as users run them: `npm run demo` (dry run, and a real send to moto), the custom store, and
// the npm-script sender.

const { test, describe, before, after } = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')

const createTracker = require('..')
const { startRedis, startMoto, awsTestEnv } = require('./helpers/services')
const { runNode } = require('./helpers/run')

const EXAMPLES = path.join(__dirname, '..', 'examples')
const TRACKED = ['/', '/about', '/images/logo.png?v=3', '/old-home', '/products/42']

/** Runs an example with exactly `env` (plus PATH); resolves `{ code, stdout, stderr }`. */
function runExample (file, env = {}) {
  return runNode(path.join(EXAMPLES, file), [], { env })
}

/** The indented lines under the heading that starts with `heading`. */
function section (stdout, heading) {
  const lines = stdout.split('\n')
  const start = lines.findIndex((l) => l.startsWith(heading))
  assert.ok(start >= 0, `no "${heading}" in:\n${stdout}`)
  const out = []
  for (const line of lines.slice(start + 1)) {
    if (!line.startsWith('  ')) break
    out.push(line.trim())
  }
  return out
}

describe('npm run demo', () => {
  test('with nothing configured: tracks the cacheable pages only and prints a dry run', async () => {
    const r = await runExample('demo.js')
    assert.equal(r.code, 0, r.stderr)
    assert.equal(r.stderr, '')
    assert.ok(!r.stdout.includes('\x1b['), 'no colours when stdout is not a terminal')
    assert.deepEqual(section(r.stdout, 'Tracked paths (5)'), TRACKED)
    const requests = section(r.stdout, 'Requests')
    for (const url of ['/no-such-page', '/cart', '/account']) {
      const line = requests.find((l) => l.includes(` ${url} `))
      assert.match(line, /not tracked/, url)
    }
    assert.equal(requests.filter((l) => l.includes('✓ tracked')).length, 6) // HEAD /about too
    const dry = section(r.stdout, 'Dry run')
    assert.equal(dry[0], 'Batch 1: one CreateInvalidation request with 5 paths')
    assert.deepEqual(dry.slice(1, 6).sort(), TRACKED)
    for (const url of ['/no-such-page', '/cart', '/account']) assert.ok(!dry.includes(url))
  })

  test('with CF_DIST and AWS credentials: sends the tracked paths to CloudFront (moto)', async () => {
    const moto = await startMoto()
    try {
      const { id } = await moto.createDistribution({ originDomain: 'www.example.com' })
      const r = await runExample('demo.js', { ...awsTestEnv, CF_DIST: id, AWS_ENDPOINT_URL_CLOUDFRONT: moto.endpoint })
      assert.equal(r.code, 0, r.stdout + r.stderr)
      assert.match(r.stdout, new RegExp(`Sending the invalidation to CloudFront distribution ${id}`))
      const received = (await moto.allInvalidatedPaths(id)).flatMap((i) => i.paths).sort()
      assert.deepEqual(received, TRACKED)
    } finally {
      await moto.stop()
    }
  })
})

describe('examples', () => {
  test('custom-store.js: a store of the original\'s shape works with the tracker', async () => {
    const r = await runExample('custom-store.js')
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /^Tracked: \/index\.html, \/news\/today, \/photos\/%C3%A9t%C3%A9%202024\.jpg$/m)
    assert.match(r.stdout, /A send would invalidate 3 paths/)
    const MapStore = require('../examples/custom-store')
    assert.ok(new MapStore() instanceof createTracker.Store)
  })

  describe('send.js (npm run invalidate)', () => {
    let redis, moto, dist
    before(async () => {
      ;[redis, moto] = await Promise.all([startRedis(), startMoto()])
      dist = (await moto.createDistribution({ originDomain: 'www.example.com' })).id
    })
    after(async () => { await Promise.allSettled([redis?.stop(), moto?.stop()]) })

    test('sends what the app tracked in Redis (REDISTOGO_URL and the original\'s key variables)', async () => {
      const invl = createTracker({ cf: { dist }, redis: { url: redis.url }, logger: false })
      await Promise.all(['/a', '/b', '/c'].map((u) => invl.storeUrl(u)))
      await invl.disconnect()
      const env = {
        AWS_REGION: 'us-east-1',
        AWS_EC2_METADATA_DISABLED: 'true',
        AWS_CONFIG_FILE: awsTestEnv.AWS_CONFIG_FILE,
        AWS_SHARED_CREDENTIALS_FILE: awsTestEnv.AWS_SHARED_CREDENTIALS_FILE,
        AWS_ACCESS_KEY: 'testing',
        AWS_SECRET_KEY: 'testing',
        CF_DIST: dist,
        REDISTOGO_URL: redis.url,
        AWS_ENDPOINT_URL_CLOUDFRONT: moto.endpoint
      }
      const r = await runExample('send.js', env)
      assert.equal(r.code, 0, r.stdout + r.stderr)
      assert.match(r.stdout, /Sending invalidation to CloudFront\.\.\. \(3 paths\)/)
      assert.match(r.stdout, /^3 paths sent; estimated cost \$0\.00$/m)
      assert.deepEqual((await moto.allInvalidatedPaths(dist)).flatMap((i) => i.paths).sort(), ['/a', '/b', '/c'])
      assert.deepEqual(await redis.client.command('ZRANGE', '{cfit}:urls', 0, -1), [])
    })

    test('without a Redis URL it says so and exits 0; a failure exits 1', async () => {
      const none = await runExample('send.js', {})
      assert.equal(none.code, 0)
      assert.match(none.stdout, /No REDIS_URL/)
      const bad = await runExample('send.js', { ...awsTestEnv, CF_DIST: dist, REDIS_URL: 'redis://127.0.0.1:1', AWS_ENDPOINT_URL: moto.endpoint })
      assert.equal(bad.code, 1)
      assert.match(bad.stderr, /Redis/)
    })
  })
})
