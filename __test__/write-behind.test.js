'use strict'

// storeUrl's write-behind path, checked in Redis itself: calls are gathered and written in batches, a promise
// resolves once its URL is in Redis, the latest TTL wins, other calls keep their order, and the process exit writes
// what is still buffered.

const { describe, it, before, after, beforeEach } = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const { startEnv, sleep } = require('./helpers/env')
const { runNode } = require('./helpers/run')
const { BatchEnd } = require('../binding.js')

const URLS = '{cfit}:urls'

let env
let raw
before(async () => {
  env = await startEnv()
  raw = env.redis.client
})
after(async () => { await env.close() })
beforeEach(async () => { await raw.command('FLUSHALL') })

/** The tracked URLs in Redis with their scores ('inf' for no TTL), sorted by URL. */
async function inRedis () {
  const flat = await raw.command('ZRANGE', URLS, '0', '-1', 'WITHSCORES')
  const out = []
  for (let i = 0; i < flat.length; i += 2) out.push([flat[i], flat[i + 1]])
  return out.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
}

async function commandsSent () {
  const info = await raw.command('INFO', 'commandstats')
  let total = 0
  for (const m of info.matchAll(/^cmdstat_(\w+):calls=(\d+)/gm)) {
    if (!['info', 'config'].includes(m[1])) total += Number(m[2])
  }
  return total
}

describe('storeUrl writes behind', () => {
  it('20,000 calls reach Redis in a handful of commands, every URL once, each promise after its URL', async () => {
    const invl = env.tracker()
    await raw.command('CONFIG', 'RESETSTAT')
    const urls = Array.from({ length: 20_000 }, (_, i) => `/page/${i % 5000}.html`)
    const promises = urls.map((u) => invl.storeUrl(u))
    await Promise.all(promises)
    const stored = await inRedis()
    assert.equal(stored.length, 5000)
    assert.ok(stored.every(([, score]) => score === 'inf'))
    const sent = await commandsSent()
    assert.ok(sent >= 1 && sent <= 200, `${sent} commands for 20,000 calls`)
    await invl.disconnect()
  })

  it('an awaited storeUrl is in Redis when it resolves, without a flush', async () => {
    const invl = env.tracker({ flushIntervalMs: 30_000 })
    await invl.storeUrl('/now.html')
    assert.deepEqual(await inRedis(), [['/now.html', 'inf']])
    await invl.disconnect()
  })

  it('nothing is written before the interval unless flush() forces it', async () => {
    const invl = env.tracker({ flushIntervalMs: 30_000 })
    invl.storeUrl('/later.html')
    await sleep(300)
    assert.deepEqual(await inRedis(), [])
    await invl.flush()
    assert.deepEqual(await inRedis(), [['/later.html', 'inf']])
    await invl.disconnect()
  })

  it('the latest TTL of a URL wins within a window', async () => {
    const invl = env.tracker({ flushIntervalMs: 30_000 })
    invl.storeUrl('/a', 60)
    invl.storeUrl('/a')
    invl.storeUrl('/b')
    invl.storeUrl('/b', 60)
    const before = Date.now()
    await invl.flush()
    const [[a, aScore], [b, bScore]] = await inRedis()
    assert.deepEqual([a, aScore], ['/a', 'inf'])
    assert.equal(b, '/b')
    assert.ok(Number(bScore) >= before + 59_000 && Number(bScore) <= Date.now() + 61_000, bScore)
    await invl.disconnect()
  })

  it('other calls made right after keep their order: remove, setUrlTTL, absolute URLs, wildcards', async () => {
    const invl = env.tracker({ flushIntervalMs: 30_000 })
    // Issued in one synchronous run, awaited together.
    await Promise.all([
      invl.storeUrl('/removed'),
      invl.removeUrl('/removed'),
      invl.storeUrl('/shortened'),
      invl.setUrlTTL('/shortened', 3600),
      invl.storeUrl('/x'),
      invl.storeUrl('https://www.example.com/x?b=1'),
      invl.storeUrl('/img/', { wildcard: true }),
      invl.flush()
    ])
    const stored = await inRedis()
    assert.deepEqual(stored.map(([u]) => u), ['/img/*', '/shortened', '/x', '/x?b=1'])
    assert.notEqual(stored.find(([u]) => u === '/shortened')[1], 'inf')
    await invl.disconnect()
  })

  it('a URL stored right after its removal or TTL change stays tracked, without expiry', async () => {
    const invl = env.tracker()
    const urls = Array.from({ length: 200 }, (_, i) => `/again/${i}`)
    await Promise.all(urls.map((u) => invl.storeUrl(u)))
    for (const u of urls) {
      invl.removeUrl(u)
      invl.storeUrl(u)
      invl.setUrlTTL(u, 60)
      invl.storeUrl(u)
    }
    await invl.flush()
    const stored = await inRedis()
    assert.deepEqual(stored.map(([u]) => u), [...urls].sort())
    assert.ok(stored.every(([, score]) => score === 'inf'))
    await invl.disconnect()
  })

  it('flush(), listUrls() and a send wait for setUrlTTL and removeUrl calls nobody awaited', async () => {
    const dist = await env.newDistribution()
    const invl = env.tracker({ cf: { dist }, flushIntervalMs: 30_000 })
    const urls = (name) => Array.from({ length: 100 }, (_, i) => `/${name}/${i}`)
    await Promise.all([...urls('gone'), ...urls('short'), ...urls('listed'), ...urls('sent')].map((u) => invl.storeUrl(u)))
    for (const u of urls('gone')) invl.removeUrl(u)
    for (const u of urls('short')) invl.setUrlTTL(u, 3600)
    await invl.flush()
    const stored = await inRedis()
    assert.equal(stored.filter(([u]) => u.startsWith('/gone/')).length, 0)
    assert.deepEqual(stored.filter(([u, score]) => u.startsWith('/short/') && score !== 'inf').length, 100)
    for (const u of urls('short')) invl.removeUrl(u)
    const listed = await invl.listUrls()
    assert.deepEqual(listed, [...urls('listed'), ...urls('sent')].sort())
    for (const u of urls('listed')) invl.removeUrl(u)
    const report = await invl.sendInvalidation()
    assert.equal(report.paths, 100)
    assert.deepEqual(await env.received(dist), urls('sent').sort())
  })

  it('stores each URL as normalize() says, whichever way it goes in', async () => {
    const invl = env.tracker({ flushIntervalMs: 30_000 })
    const urls = [
      '/plain.html', '/caf\u00e9', '/emoji/\u{1F600}', '/lone/\uD83D', '/\uDE00lone', '/space here', '/star*',
      '/a%2Fb', '/50%', '/q?x=1&y=\u00e9', '/' + 'x'.repeat(500), 'relative/path', 'http://h.example/abs?q=1',
      '/' + '\u00e9'.repeat(443)
    ]
    for (const u of urls) invl.storeUrl(u)
    await invl.flush()
    const expected = [...new Set(urls.map((u) => invl.normalize(u)))].sort()
    assert.deepEqual((await inRedis()).map(([u]) => u), expected)
    await invl.disconnect()
  })

  it('a bad URL is refused by its own promise and the calls around it are stored', async () => {
    const invl = env.tracker({ flushIntervalMs: 30_000 })
    const good = invl.storeUrl('/before')
    await assert.rejects(invl.storeUrl('ftp://h/x'), { code: 'ERR_INVALID_ARG_VALUE' })
    await assert.rejects(invl.storeUrl('/' + 'a'.repeat(4000)), { code: 'ERR_INVALID_ARG_VALUE' })
    await assert.rejects(invl.storeUrl('/ttl', -1), { code: 'ERR_INVALID_ARG_VALUE' })
    await assert.rejects(invl.storeUrl('/ttl', NaN), { code: 'ERR_INVALID_ARG_VALUE' })
    const after = invl.storeUrl('/after')
    await invl.flush()
    await Promise.all([good, after])
    assert.deepEqual((await inRedis()).map(([u]) => u), ['/after', '/before'])
    await invl.disconnect()
  })

  it('a malformed batch handed to the native side is refused whole and tracks nothing', async () => {
    const invl = env.tracker({ flushIntervalMs: 30_000 })
    const batch = (urls, lengths, ttls) => () => invl._native.trackBatch(urls.join(''), Uint32Array.from(lengths), Float64Array.from(ttls), BatchEnd.Running)
    assert.throws(batch(['/a', '/b'], [2, 3], [0, 0]), /does not add up/)
    assert.throws(batch(['/a', '/b'], [2, 2], [0]), /2 URLs came with 1 TTLs/)
    assert.throws(batch(['/a', '/b'], [2, 2], [0, -2]), /ttlInSec/) // -1 (BATCH_REMOVE_TTL) is a removal
    assert.throws(batch(['/a', 'ftp://h/b'], [2, 9], [0, 0]), /unsupported scheme/)
    await invl.flush()
    assert.deepEqual(await inRedis(), [])
    await invl.disconnect()
  })

  it('process.exit() right after storeUrl calls still writes them', async () => {
    const script = `
      const createTracker = require(${JSON.stringify(path.join(__dirname, '..'))})
      const invl = createTracker({ cf: { dist: 'E1' }, redis: { url: process.argv[1] }, flushIntervalMs: 60000, logger: false })
      for (let i = 0; i < 3000; i++) invl.storeUrl('/exit/' + i)
      invl.storeUrl('http://h.example/exit/absolute')
      process.exit(0)
    `
    const result = await runNode('-e', [script, env.redis.url])
    assert.equal(result.code, 0, result.stderr)
    const stored = await inRedis()
    assert.equal(stored.length, 3001)
    assert.ok(stored.some(([u]) => u === '/exit/absolute'))
  })

  it('with Redis down at exit, the process still exits, and the logger says what was not written', async () => {
    const { freePort } = require('./helpers/services')
    const script = `
      const createTracker = require(${JSON.stringify(path.join(__dirname, '..'))})
      const invl = createTracker({ cf: { dist: 'E1' }, redis: { url: process.argv[1] }, flushIntervalMs: 60000,
        logger: { info () {}, warn (m) { console.log(m) }, error (m) { console.log(m) } } })
      invl.storeUrl('/x')
      process.exit(0)
    `
    const result = await runNode('-e', [script, `redis://127.0.0.1:${await freePort()}`])
    assert.equal(result.code, 0, result.stderr)
    assert.match(result.stdout, /not written/)
  })

  it('a custom store cannot be written at exit: the logger says so, and the exit is not held up', async () => {
    const script = `
      const createTracker = require(${JSON.stringify(path.join(__dirname, '..'))})
      const store = { set () {}, getAllKeys () { return [] }, clearAll () {} }
      const invl = createTracker({ cf: { dist: 'E1' }, store, flushIntervalMs: 60000,
        logger: { info () {}, warn (m) { console.log(m) }, error (m) { console.log(m) } } })
      invl.storeUrl('/x')
      process.exit(0)
    `
    const result = await runNode('-e', [script])
    assert.equal(result.code, 0, result.stderr)
    assert.match(result.stdout, /not written/)
  })
})

describe('a custom store in a process that ends on its own', () => {
  const script = (failures) => `
    const createTracker = require(${JSON.stringify(path.join(__dirname, '..'))})
    let failures = ${failures}
    const store = { set (k) { if (failures-- > 0) throw new Error('store busy'); console.log('stored ' + k) }, getAllKeys () { return [] }, clearAll () {} }
    const invl = createTracker({ cf: { dist: 'E1' }, store, logger: { info () {}, warn () {}, error () {} } })
    invl.storeUrl('/retried')
  `

  it('is kept alive while the writer retries a write that failed, until it went through', async () => {
    const result = await runNode('-e', [script(2)])
    assert.equal(result.code, 0, result.stderr)
    assert.equal(result.stdout.trim(), 'stored /retried')
  })
})

describe('a tracker nobody keeps', () => {
  it('is not held alive by the exit hook', async () => {
    const script = `
      const createTracker = require(${JSON.stringify(path.join(__dirname, '..'))})
      const { setFlagsFromString } = require('node:v8')
      const { runInNewContext } = require('node:vm')
      setFlagsFromString('--expose-gc')
      const gc = runInNewContext('gc')
      let collected = 0
      const registry = new FinalizationRegistry(() => { collected++ })
      for (let i = 0; i < 50; i++) registry.register(createTracker({ cf: { dist: 'E1' }, store: 'memory', logger: false }), i)
      setTimeout(() => { gc(); setTimeout(() => { gc(); setTimeout(() => console.log(collected), 50) }, 50) }, 50)
    `
    const result = await runNode('-e', [script])
    assert.equal(result.code, 0, result.stderr)
    assert.ok(Number(result.stdout) > 0, result.stdout)
  })
})

describe('a URL already in Redis is not written again, unless it may have left', () => {
  const urls = Array.from({ length: 300 }, (_, i) => `/known/${i}.html`)
  const storeAll = (invl, ttl) => Promise.all(urls.map((u) => invl.storeUrl(u, ttl)))
  const zadds = async () => Number(/cmdstat_zadd:calls=(\d+)/.exec(await raw.command('INFO', 'commandstats'))?.[1] ?? 0)
  const allTracked = async () => {
    const stored = await inRedis()
    assert.deepEqual(stored.map(([u]) => u), [...urls].sort())
    assert.ok(stored.every(([, score]) => score === 'inf'), 'every URL tracked without expiry')
  }

  it('storing the same URLs again runs no ZADD in Redis', async () => {
    const invl = env.tracker()
    await storeAll(invl)
    await raw.command('CONFIG', 'RESETSTAT')
    await storeAll(invl)
    await storeAll(invl)
    assert.equal(await zadds(), 0)
    await allTracked()
    await invl.disconnect()
  })

  it('after another process sent them, they are tracked again and the next send sends them again', async () => {
    const dist = await env.newDistribution()
    const server = env.tracker({ cf: { dist } })
    const sender = env.tracker({ cf: { dist } })
    await storeAll(server)
    assert.equal((await sender.sendInvalidation()).paths, urls.length)
    await storeAll(server)
    await allTracked()
    assert.equal((await sender.sendInvalidation()).paths, urls.length)
    assert.deepEqual(await env.received(dist), [...urls, ...urls].sort())
    await server.disconnect()
  })

  for (const [what, change] of [
    ['removeUrl', (other) => other.removeUrl(urls[7])],
    ['setUrlTTL', (other) => other.setUrlTTL(urls[7], 60)],
    ['storeUrl with a TTL', (other) => other.storeUrl(urls[7], 60)]
  ]) {
    it(`after ${what} in another process, storing it again tracks it without expiry`, async () => {
      const server = env.tracker()
      const other = env.tracker()
      await storeAll(server)
      await change(other)
      await storeAll(server)
      await allTracked()
      await Promise.all([server.disconnect(), other.disconnect()])
    })
  }

  it('where INFO is denied (an ACL, a managed service), URLs are written, and not again', async () => {
    await raw.command('ACL', 'SETUSER', 'noinfo', 'on', '>noinfo-pass', '~{cfit}:*', '+@all', '-info')
    const invl = env.tracker({ redis: { url: `redis://noinfo:noinfo-pass@127.0.0.1:${env.redis.port}` } })
    try {
      await storeAll(invl)
      await allTracked()
      await raw.command('CONFIG', 'RESETSTAT')
      await storeAll(invl)
      assert.equal(await zadds(), 0)
      await allTracked()
    } finally {
      await invl.disconnect()
      await raw.command('ACL', 'DELUSER', 'noinfo')
    }
  })

  it('after Redis was emptied, storing them again writes them all', async () => {
    const invl = env.tracker()
    await storeAll(invl)
    await raw.command('FLUSHALL')
    await storeAll(invl)
    await allTracked()
    await invl.disconnect()
  })

  it('after the set of URLs alone was evicted (a maxmemory policy), storing them again writes them all', async () => {
    const invl = env.tracker()
    await storeAll(invl)
    await raw.command('DEL', '{cfit}:urls') // what allkeys-lru does to a large key; the generation key stays
    await storeAll(invl)
    await allTracked()
    await invl.disconnect()
  })

  it('after the set of URLs was evicted, a new URL written first does not make the known ones pass for written', async () => {
    const invl = env.tracker()
    await storeAll(invl)
    await raw.command('DEL', '{cfit}:urls')
    // A write of new URLs only (nothing to skip, so nothing checked) recreates the set: the known ones are not in it.
    await invl.storeUrl('/new-after-eviction')
    await invl.flush()
    await storeAll(invl)
    assert.deepEqual((await inRedis()).map(([u]) => u), [...urls, '/new-after-eviction'].sort())
    await invl.disconnect()
  })

  it('past maxTrackedUrls, URLs stored again are covered again', async () => {
    const invl = env.tracker({ maxTrackedUrls: 100 })
    await storeAll(invl)
    await raw.command('DEL', '{cfit}:overflow')
    await storeAll(invl)
    assert.equal((await inRedis()).length, 100)
    assert.deepEqual(await raw.command('SMEMBERS', '{cfit}:overflow'), ['/known/*'])
    await invl.disconnect()
  })
})
