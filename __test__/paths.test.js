'use strict'

// Paths CloudFront accepts and means: tricky URLs go through storeUrl -> sendInvalidation to moto and arrive as AWS's
// rules ask; wildcards only on request; query-string and index-document modes; flood and cost guards.

const { describe, it, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { startEnv } = require('./helpers/env')

let env
let n = 0
before(async () => { env = await startEnv() })
after(async () => { await env.close() })

async function sendThrough (urls, extra = {}) {
  const dist = await env.newDistribution()
  const tracker = env.tracker({ cf: { dist }, redis: { url: env.redis.url, prefix: `paths${++n}` }, ...extra })
  for (const u of urls) {
    if (Array.isArray(u)) await tracker.storeUrl(...u)
    else await tracker.storeUrl(u)
  }
  const report = await tracker.sendInvalidation()
  return { report, received: await env.received(dist), tracker, dist }
}

const TABLE = [
  // [served URL, path CloudFront must receive]
  ['/plain/file.css', '/plain/file.css'],
  ['/with space.html', '/with%20space.html'],
  ['/already%20encoded.html', '/already%20encoded.html'],
  ['/café/menu', '/caf%C3%A9/menu'],
  ['/日本/語', '/%E6%97%A5%E6%9C%AC/%E8%AA%9E'],
  ['/discount-50%', '/discount-50%25'],
  ['/stars*in*name', '/stars%2Ain%2Aname'],
  ['/search?q=a b&x=1', '/search?q=a%20b&x=1'],
  ['/page#section', '/page'],
  ['/<script>alert(1)</script>', '/%3Cscript%3Ealert(1)%3C/script%3E'],
  ['/~user/home', '/%7Euser/home'],
  ['/a//b', '/a//b'],
  ['/a/../b', '/a/../b'],
  ['/"quoted"', '/%22quoted%22'],
  ['/{brace}|pipe\\back^caret`tick', '/%7Bbrace%7D%7Cpipe%5Cback%5Ecaret%60tick'],
  ['/[bracket]', '/%5Bbracket%5D'],
  ['https://www.example.com:8443/abs/path?v=2#top', '/abs/path?v=2'],
  ['relative/no-slash', '/relative/no-slash']
]

describe('normalisation, end to end', () => {
  it('every tricky URL arrives at CloudFront as the path AWS asks for', async () => {
    const { received } = await sendThrough(TABLE.map(([u]) => u))
    assert.deepEqual(received, [...new Set(TABLE.map(([, p]) => p))].sort())
  })

  it("'/a b' and '/a%20b' are one tracked path", async () => {
    const { received } = await sendThrough(['/a b', '/a%20b', '/a b'])
    assert.deepEqual(received, ['/a%20b'])
  })

  it("a '*' from the internet never becomes a wildcard: '/*' does not empty the distribution", async () => {
    const { received } = await sendThrough(['/*', '/images/*'])
    assert.deepEqual(received, ['/%2A', '/images/%2A'])
    assert.ok(received.every((p) => !p.endsWith('*')))
  })

  it('wildcards are sent only when asked for explicitly', async () => {
    const { received } = await sendThrough([['/img/', { wildcard: true }], '/img/a.png'])
    assert.deepEqual(received, ['/img/*', '/img/a.png'])
  })

  it('over 4,000 characters is refused, and nothing is stored', async () => {
    const dist = await env.newDistribution()
    const tracker = env.tracker({ cf: { dist }, store: 'memory://' })
    await assert.rejects(tracker.storeUrl('/' + 'x'.repeat(4000)), { code: 'ERR_INVALID_ARG_VALUE' })
    await assert.rejects(tracker.storeUrl('/' + 'é'.repeat(700)), { code: 'ERR_INVALID_ARG_VALUE', message: /4000/ })
    assert.deepEqual(await tracker.listUrls(), [])
  })
})

describe('query strings', () => {
  const urls = ['/photo.jpg?w=100', '/photo.jpg?w=200', '/photo.jpg']
  it("'keep' (default) sends each variant", async () => {
    const { received } = await sendThrough(urls)
    assert.deepEqual(received, ['/photo.jpg', '/photo.jpg?w=100', '/photo.jpg?w=200'])
  })
  it("'strip' sends the bare path once", async () => {
    const { received } = await sendThrough(urls, { queryStrings: 'strip' })
    assert.deepEqual(received, ['/photo.jpg'])
  })
  it("a sender's 'strip' applies to URLs another process tracked with 'keep' (a server, then `npm run invalidate`)", async () => {
    const dist = await env.newDistribution()
    const redis = { url: env.redis.url, prefix: `paths${++n}` }
    const server = env.tracker({ cf: { dist }, redis })
    await Promise.all(urls.map((u) => server.storeUrl(u)))
    const sender = env.tracker({ cf: { dist }, redis, queryStrings: 'strip' })
    const report = await sender.sendInvalidation()
    assert.equal(report.paths, 1)
    assert.deepEqual(await env.received(dist), ['/photo.jpg'])
    assert.equal(await env.redis.client.command('ZCARD', `{${redis.prefix}}:urls`), 0, 'every variant is forgotten')
  })
  it("'wildcard' covers every variant of the path, and the root never widens into '/*'", async () => {
    const { received } = await sendThrough([...urls, '/?utm=x'], { queryStrings: 'wildcard' })
    assert.deepEqual(received, ['/', '/?*', '/photo.jpg', '/photo.jpg?*'])
  })
})

describe('directory variants', () => {
  it("indexDocument invalidates '/docs', '/docs/' and '/docs/index.html' together", async () => {
    const { received } = await sendThrough(['/docs/', '/guide/index.html', '/'], { indexDocument: 'index.html' })
    assert.deepEqual(received, ['/', '/docs', '/docs/', '/docs/index.html', '/guide', '/guide/', '/guide/index.html', '/index.html'])
  })
})

describe('cost guard', () => {
  it('maxPaths collapses into the fewest covering wildcards, and the report prices the send', async () => {
    const urls = []
    for (const dir of ['a', 'b', 'c']) for (let i = 0; i < 200; i++) urls.push(`/${dir}/item-${i}.html`)
    const { received, report } = await sendThrough(urls, { maxPaths: 20 })
    assert.ok(received.length <= 20, `${received.length} paths`)
    assert.equal(report.collapsed, true)
    assert.ok(received.filter((p) => p.endsWith('*')).length <= 15)
    for (const u of urls) {
      assert.ok(received.some((p) => p === u || (p.endsWith('*') && u.startsWith(p.slice(0, -1)))), `${u} not covered`)
    }
    assert.ok(!received.includes('/*'), 'three directories fit the budget without emptying the distribution')
    assert.equal(report.billedPaths, received.length)
  })

  it('estimates cost against the free 1,000 paths a month, from a counter kept in the store', async () => {
    const dist = await env.newDistribution()
    const tracker = env.tracker({ cf: { dist }, redis: { url: env.redis.url, prefix: `cost${++n}` }, batchSize: 3000 })
    await Promise.all(Array.from({ length: 900 }, (_, i) => tracker.storeUrl(`/first/${i}`)))
    const first = await tracker.sendInvalidation()
    assert.equal(first.estimatedCostUsd, 0)
    assert.equal(first.billedThisMonth, 900)
    await Promise.all(Array.from({ length: 300 }, (_, i) => tracker.storeUrl(`/second/${i}`)))
    const second = await tracker.sendInvalidation()
    assert.equal(second.billedThisMonth, 1200)
    assert.equal(second.estimatedCostUsd, 1) // 200 paths past the free 1,000, at $0.005
  })
})

describe('flood guard', () => {
  it('a million unique URLs leave Redis memory bounded and the next send still covers them all', async () => {
    const dist = await env.newDistribution()
    const prefix = `flood${++n}`
    const tracker = env.tracker({ cf: { dist }, redis: { url: env.redis.url, prefix }, maxTrackedUrls: 10000, batchSize: 3000 })
    const memory = async () => Number(/used_memory:(\d+)/.exec(await env.redis.client.command('INFO', 'memory'))[1])
    const before = await memory()
    const TOTAL = 1_000_000
    let pending = []
    for (let i = 0; i < TOTAL; i++) {
      pending.push(tracker.storeUrl(`/flood/${i}?utm=${i}`))
      if (pending.length === 50_000) { await Promise.all(pending); pending = [] }
    }
    // Bursts elsewhere overflow into their own wildcards; a cache-buster flood on the home page covers only its
    // query variants, not the whole distribution.
    for (let i = 0; i < 100; i++) pending.push(tracker.storeUrl(`/other/${i}.png`))
    for (let i = 0; i < 100; i++) pending.push(tracker.storeUrl(`/?cb=${i}`))
    await Promise.all(pending)
    await tracker.flush()
    const grown = (await memory()) - before
    assert.ok(grown < 16 * 1024 * 1024, `Redis grew by ${grown} bytes`)
    assert.equal(Number(await env.redis.client.command('ZCARD', `{${prefix}}:urls`)), 10000)

    const report = await tracker.sendInvalidation()
    assert.deepEqual(report.overflow.sort(), ['/?*', '/flood/*', '/other/*'])
    const received = await env.received(dist)
    assert.ok(received.includes('/flood/*') && received.includes('/other/*') && received.includes('/?*'))
    // Every flooded URL is covered by something sent, and nothing widened to the whole distribution.
    assert.ok(!received.includes('/*'))
    assert.equal(received.length, 10003)
  })
})
