'use strict'

// The Express middleware, in Express 5, Express 4 and a plain http server, observed through a real Redis store.

const { test, describe, before, after, beforeEach } = require('node:test')
const assert = require('node:assert/strict')
const http = require('node:http')
const net = require('node:net')

const createTracker = require('..')
const { startRedis } = require('./helpers/services')
const { sleep, noUnhandledRejections } = require('./helpers/env')
const { runNode } = require('./helpers/run')

const WAIT_MS = 5000

/** Starts `handler` on a loopback port; resolves `{ url, close }`. */
async function listen (handler) {
  const server = http.createServer(handler)
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(resolve) })
  }
}

/** Collects what the tracker logs. */
function captureLogger () {
  const lines = []
  const log = (level) => (message) => lines.push({ level, message })
  return { lines, logger: { info: log('info'), warn: log('warn'), error: log('error') } }
}

/** Polls the tracker's list (flushing its write buffer first) until it equals `expected`, then asserts it. */
async function assertTracked (tracker, expected) {
  const want = [...expected].sort()
  let got
  for (const deadline = Date.now() + WAIT_MS; Date.now() < deadline;) {
    await tracker.flush()
    got = (await tracker.listUrls()).sort()
    if (JSON.stringify(got) === JSON.stringify(want)) break
    await sleep(25)
  }
  assert.deepEqual(got, want)
}

/** The members of the Redis store's sorted set of tracked paths, read with a raw client. */
async function rawTracked (redis, prefix = 'cfit') {
  return (await redis.client.command('ZRANGE', `{${prefix}}:urls`, 0, -1)).sort()
}

/** Requests every [method, path, headers?] in order; resolves with their statuses. */
async function hit (base, requests) {
  const statuses = []
  for (const [method, path, headers] of requests) {
    const res = await fetch(base + path, { method, headers, redirect: 'manual' })
    await res.arrayBuffer()
    statuses.push(res.status)
  }
  return statuses
}

/** Sends `GET target` as it is (no URL parsing on the way), as a client from the internet may; resolves the status. */
function rawGet (base, target) {
  const { hostname, port } = new URL(base)
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), hostname, () => {
      socket.end(`GET ${target} HTTP/1.1\r\nHost: ${hostname}\r\nConnection: close\r\n\r\n`)
    })
    let head = ''
    socket.on('data', (chunk) => { head += chunk })
    socket.on('error', reject)
    socket.on('close', () => resolve(Number(head.split(' ')[1])))
  })
}

/** A site with every kind of response, built with `express` (v4 or v5). */
function buildApp (express, tracker) {
  const app = express()
  app.use(tracker.middleware())
  app.get('/page', (req, res) => res.send('page'))
  app.get('/img/logo.png', (req, res) => res.type('png').send(Buffer.from([0x89, 0x50])))
  app.get('/moved', (req, res) => res.redirect(301, '/page'))
  app.get('/boom', () => { throw new Error('boom') })
  app.get('/private', (req, res) => res.set('Cache-Control', 'private, max-age=60').send('mine'))
  app.get('/nostore', (req, res) => res.set('Cache-Control', 'no-store').send('fresh'))
  app.get('/public', (req, res) => res.set('Cache-Control', 'public, max-age=60').send('shared'))
  app.post('/form', (req, res) => res.send('posted'))
  const blog = express.Router()
  blog.get('/post/:id', (req, res) => res.send(`post ${req.params.id}`))
  app.use('/blog', blog)
  // The original's 404 handler, without the removeUrl call: the middleware does that now.
  app.use((req, res) => res.status(404).send('not found'))
  app.use((err, req, res, next) => res.status(500).send(err.message))
  return app
}

const ROUTES = [
  ['GET', '/page'],
  ['HEAD', '/page'],
  ['GET', '/img/logo.png?v=2'],
  ['GET', '/moved'],
  ['GET', '/missing'],
  ['GET', '/boom'],
  ['GET', '/private'],
  ['GET', '/nostore'],
  ['GET', '/public'],
  ['POST', '/form'],
  ['GET', '/blog/post/7']
]
const EXPECTED = ['/blog/post/7', '/img/logo.png?v=2', '/moved', '/page', '/public']

describe('middleware', () => {
  let redis
  before(async () => { redis = await startRedis() })
  after(async () => { await redis?.stop() })
  beforeEach(async () => { await redis.client.command('FLUSHDB') })

  const tracker = (options = {}) => createTracker({ cf: { dist: 'EDIST' }, redis: { url: redis.url }, logger: false, ...options })

  for (const [name, express] of [['Express 5', require('express')], ['Express 4', require('express4')]]) {
    test(`${name}: tracks exactly the cacheable GET/HEAD responses, and a 404 stops tracking`, async () => {
      const invl = tracker()
      await invl.storeUrl('/missing') // served once, gone now
      const server = await listen(buildApp(express, invl))
      try {
        const statuses = await hit(server.url, ROUTES)
        assert.deepEqual(statuses, [200, 200, 200, 301, 404, 500, 200, 200, 200, 200, 200])
        await assertTracked(invl, EXPECTED)
        assert.deepEqual(await rawTracked(redis), EXPECTED)
      } finally {
        await server.close()
        await invl.disconnect()
      }
    })
  }

  test('a plain http server: (req, res, next) with a no-op next, and without next', async () => {
    const invl = tracker()
    const mw = invl.middleware()
    const server = await listen((req, res) => {
      if (req.url.startsWith('/bare')) mw(req, res)
      else mw(req, res, () => {})
      res.statusCode = req.url.startsWith('/gone') ? 404 : 200
      res.end('hello')
    })
    try {
      await hit(server.url, [['GET', '/hello?x=1'], ['GET', '/bare'], ['GET', '/gone'], ['DELETE', '/hello'],
        ['GET', '/long/' + 'x'.repeat(4000)]])
      await assertTracked(invl, ['/bare', '/hello?x=1'])
      assert.deepEqual(await rawTracked(redis), ['/bare', '/hello?x=1'])
    } finally {
      await server.close()
      await invl.disconnect()
    }
  })

  test('Cache-Control given to writeHead (object or flat array), with no setHeader before it, is seen', async () => {
    // Each route's writeHead headers; Node's getHeader() does not return them, its header block holds them.
    const routes = {
      '/private': { 'Cache-Control': 'private, max-age=60' },
      '/nostore': { 'cache-control': 'No-Store' },
      '/array': ['Content-Type', 'text/plain', 'Cache-Control', 'no-store'],
      '/array-twice': ['Cache-Control', 'public', 'cache-control', 'private'],
      '/public': { 'Cache-Control': 'public, max-age=60' },
      '/other-header': { 'X-Cache-Control': 'private', 'X-Note': 'no-store' },
      '/none': {}
    }
    const want = ['/none', '/other-header', '/public']
    const respond = (req, res) => {
      res.writeHead(200, routes[req.url.replace(/^\/express/, '')])
      res.end('hello')
    }
    const paths = Object.keys(routes).map((p) => ['GET', p])

    const plainTracker = tracker()
    const mw = plainTracker.middleware()
    const plain = await listen((req, res) => mw(req, res, () => respond(req, res)))
    // Express adds its X-Powered-By with setHeader, which makes writeHead's headers readable: without it they are not.
    const expressTracker = tracker({ redis: { url: redis.url, prefix: 'express' } })
    const app = require('express')()
    app.disable('x-powered-by')
    app.use(expressTracker.middleware())
    app.get('/express/{*rest}', respond)
    const express = await listen(app)
    try {
      assert.deepEqual(await hit(plain.url, paths), paths.map(() => 200))
      assert.deepEqual(await hit(express.url, paths.map(([m, p]) => [m, '/express' + p])), paths.map(() => 200))
      await assertTracked(plainTracker, want)
      await assertTracked(expressTracker, want.map((p) => '/express' + p))
      assert.deepEqual(await rawTracked(redis), want)
      assert.deepEqual(await rawTracked(redis, 'express'), want.map((p) => '/express' + p))
    } finally {
      await plain.close()
      await express.close()
      await plainTracker.disconnect()
      await expressTracker.disconnect()
    }
  })

  test('what it tracks reaches Redis by itself, with no flush() and no other call', async () => {
    const invl = tracker({ flushIntervalMs: 50 })
    const server = await listen(buildApp(require('express'), invl))
    try {
      await hit(server.url, ROUTES)
      let stored = []
      for (const deadline = Date.now() + WAIT_MS; Date.now() < deadline;) {
        stored = await rawTracked(redis)
        if (stored.length >= EXPECTED.length) break
        await sleep(20)
      }
      assert.deepEqual(stored, EXPECTED)
    } finally {
      await server.close()
      await invl.disconnect()
    }
  })

  test('a response is decided when it ends: slow and streamed ones count, one destroyed before its end does not', async () => {
    // The middleware sweeps once per write interval: each response below ends after several 10 ms sweeps, so it is
    // looked at again, then decided on its 'finish'.
    const invl = tracker({ flushIntervalMs: 10 })
    await invl.storeUrl('/slow-gone')
    await invl.flush()
    const later = (ms, fn) => setTimeout(fn, ms)
    const app = require('express')()
    app.use(invl.middleware())
    app.get('/slow', (req, res) => later(80, () => res.set('Cache-Control', 'public').send('slow')))
    app.get('/streamed', (req, res) => {
      res.write('part 1, ')
      later(40, () => res.write('part 2, '))
      later(80, () => res.end('end'))
    })
    app.get('/slow-private', (req, res) => later(80, () => res.set('Cache-Control', 'private').send('mine')))
    app.get('/slow-gone', (req, res) => later(80, () => res.sendStatus(404)))
    app.get('/cut-off', (req, res) => {
      res.write('part 1')
      later(40, () => res.destroy())
    })
    const server = await listen(app)
    try {
      assert.deepEqual(await hit(server.url, [['GET', '/slow'], ['GET', '/streamed'], ['GET', '/slow-private'],
        ['GET', '/slow-gone']]), [200, 200, 200, 404])
      const cutOff = await fetch(server.url + '/cut-off')
      await assert.rejects(cutOff.text())
      await sleep(100) // sweeps that would see it
      await assertTracked(invl, ['/slow', '/streamed'])
      assert.deepEqual(await rawTracked(redis), ['/slow', '/streamed'])
    } finally {
      await server.close()
      await invl.disconnect()
    }
  })

  test('a 404 found by a sweep does not undo the same URL served since; a throwing next() still counts', async () => {
    const invl = tracker({ flushIntervalMs: 5000 }) // no sweep but the one flush() makes
    await invl.storeUrl('/flip')
    await invl.flush()
    let gone = true
    const app = require('express')()
    app.use(invl.middleware())
    app.get('/flip', (req, res) => {
      // First a 404 that ends after the handler returned (so it waits for a sweep), then the page is back at once.
      if (gone) setTimeout(() => res.sendStatus(404), 5)
      else res.send('back')
      gone = false
    })
    const server = await listen(app)
    const mw = invl.middleware()
    const plain = http.createServer((req, res) => {
      try {
        mw(req, res, () => { throw new Error('handler failed') })
      } catch {
        res.end('recovered') // the caller answers once next() threw
      }
    })
    await new Promise((resolve) => plain.listen(0, '127.0.0.1', resolve))
    try {
      assert.deepEqual(await hit(server.url, [['GET', '/flip'], ['GET', '/flip']]), [404, 200])
      assert.deepEqual(await hit(`http://127.0.0.1:${plain.address().port}`, [['GET', '/recovered']]), [200])
      await assertTracked(invl, ['/flip', '/recovered'])
      assert.deepEqual(await rawTracked(redis), ['/flip', '/recovered'])
    } finally {
      plain.closeAllConnections()
      plain.close()
      await server.close()
      await invl.disconnect()
    }
  })

  test('404s answered at once keep their order with the other calls; a URL that cannot become a path is not logged', async () => {
    const { lines, logger } = captureLogger()
    const invl = tracker({ flushIntervalMs: 60_000, logger }) // one hand-over: the flush() below
    await invl.storeUrl('/was-tracked')
    await invl.flush()
    // The statuses each path answers with, in turn; paths under /ok answer 200, others 404.
    const plan = { '/a': [200, 404], '/b': [404, 200], '/c': [200, 404, 200], '/was-tracked': [404] }
    const app = require('express')()
    app.use(invl.middleware())
    app.use((req, res) => {
      const status = plan[req.path]?.shift() ?? (req.path.startsWith('/ok/') ? 200 : 404)
      res.status(status).send(String(status))
    })
    const server = await listen(app)
    try {
      const order = ['/a', '/b', '/c', '/a', '/b', '/c', '/c', '/was-tracked'].map((path) => ['GET', path])
      assert.deepEqual(await hit(server.url, order), [200, 404, 200, 404, 200, 404, 200, 404])
      // Junk from the internet: another scheme, and paths too long for CloudFront once encoded (4,501 characters).
      const tooLong = '{'.repeat(1500)
      for (const target of ['ftp://example.com/a', `/${tooLong}`, `/ok/${tooLong}`]) {
        assert.equal(await rawGet(server.url, target), target.startsWith('/ok/') ? 200 : 404)
      }
      await invl.flush()
      assert.deepEqual(await rawTracked(redis), ['/b', '/c'])
      assert.deepEqual(lines, [])
    } finally {
      await server.close()
      await invl.disconnect()
    }
  })

  test('a response that is not a Node server\'s (a test double without res.req) is tracked on its finish', async () => {
    const { EventEmitter } = require('node:events')
    const invl = tracker()
    const mw = invl.middleware()
    const respond = (url, status, cacheControl) => {
      const req = { method: 'GET', url, headers: {} }
      const res = Object.assign(new EventEmitter(), { statusCode: status, getHeader: () => cacheControl })
      mw(req, res, () => {})
      res.emit('finish')
    }
    respond('/double/a', 200)
    respond('/double/private', 200, 'private, max-age=60')
    respond('/double/error', 500)
    try {
      await assertTracked(invl, ['/double/a'])
    } finally {
      await invl.disconnect()
    }
  })

  test('process.exit() right after a response still writes its URL', async () => {
    const script = `
      const http = require('node:http')
      const createTracker = require(${JSON.stringify(require('node:path').join(__dirname, '..'))})
      const invl = createTracker({ cf: { dist: 'E1' }, redis: { url: process.argv[1] }, flushIntervalMs: 60000, logger: false })
      const mw = invl.middleware()
      const server = http.createServer((req, res) => {
        mw(req, res, () => {})
        res.on('finish', () => process.exit(0))
        res.end('ok')
      }).listen(0, '127.0.0.1', () => fetch('http://127.0.0.1:' + server.address().port + '/at-exit?x=1'))
    `
    const result = await runNode('-e', [script, redis.url])
    assert.equal(result.code, 0, result.stderr)
    assert.deepEqual(await rawTracked(redis), ['/at-exit?x=1'])
  })

  /**
   * A script whose tracker (made by `setup`, as `invl`) sees one request through the middleware; then its server
   * closes, and the process ends on its own, with nothing left to wait for but the tracker.
   */
  const endingOnItsOwn = (setup) => `
    const http = require('node:http')
    const createTracker = require(${JSON.stringify(require('node:path').join(__dirname, '..'))})
    ${setup}
    const mw = invl.middleware()
    const server = http.createServer((req, res) => { mw(req, res, () => {}); res.end('ok') })
    server.listen(0, '127.0.0.1', async () => {
      await (await fetch('http://127.0.0.1:' + server.address().port + '/natural-end')).text()
      server.closeAllConnections()
      server.close()
    })
  `

  test('a process that ends on its own writes what the middleware tracked to Redis', async () => {
    const script = endingOnItsOwn(`
      const invl = createTracker({ cf: { dist: 'E1' }, redis: { url: process.argv[1] }, logger: false })
    `)
    const result = await runNode('-e', [script, redis.url])
    assert.equal(result.code, 0, result.stderr)
    assert.deepEqual(await rawTracked(redis), ['/natural-end'])
  })

  test('a process that ends on its own writes what the middleware tracked, even to a custom store', async () => {
    const script = endingOnItsOwn(`
      const store = { set (key) { console.log('stored ' + key) }, getAllKeys () { return [] }, clearAll () {} }
      const invl = createTracker({ cf: { dist: 'E1' }, store, logger: { info () {}, warn: console.log, error: console.log } })
    `)
    const result = await runNode('-e', [script])
    assert.equal(result.code, 0, result.stderr)
    assert.equal(result.stdout.trim(), 'stored /natural-end')
  })

  test('a middleware mounted twice tracks a request once; a router-level one sees the mount path', async () => {
    const express = require('express')
    const invl = tracker()
    const app = express()
    app.use(invl.middleware())
    const shop = express.Router()
    shop.use(invl.middleware())
    shop.get('/item/:id', (req, res) => res.send('item'))
    app.use('/shop', shop)
    const solo = express.Router()
    solo.use(invl.middleware())
    solo.get('/x', (req, res) => res.send('x'))
    const inner = express()
    inner.use('/solo', solo)
    const server = await listen(inner)
    const server2 = await listen(app)
    try {
      await hit(server.url, [['GET', '/solo/x?y=1']])
      await hit(server2.url, [['GET', '/shop/item/3']])
      await assertTracked(invl, ['/shop/item/3', '/solo/x?y=1'])
    } finally {
      await server.close()
      await server2.close()
      await invl.disconnect()
    }
  })

  test('options: onlyCloudFront, methods, statuses, filter, ttl, removeOn404', async () => {
    const express = require('express')
    const invl = tracker()
    const app = express()
    app.use('/cf', invl.middleware({ onlyCloudFront: true }))
    app.use('/m', invl.middleware({ methods: ['get', 'PUT'] }))
    app.use('/s', invl.middleware({ statuses: [200, 203] }))
    app.use('/f', invl.middleware({ statuses: (s) => s === 404 || s === 200, filter: (req) => !req.query.skip }))
    app.use('/t', invl.middleware({ ttl: (req) => (req.originalUrl === '/t/short' ? 60 : undefined) }))
    app.use('/n', invl.middleware({ ttl: 3600, removeOn404: false }))
    app.all('/{*rest}', (req, res) => res.status(Number(req.query.status || 200)).send('ok'))
    const server = await listen(app)
    const started = Date.now()
    try {
      await invl.storeUrl('/n/kept')
      await hit(server.url, [
        ['GET', '/cf/direct'],
        ['GET', '/cf/id', { 'X-Amz-Cf-Id': 'abc==' }],
        ['GET', '/cf/via', { Via: '1.1 0123abcd.cloudfront.net (CloudFront)' }],
        ['GET', '/cf/ua', { 'User-Agent': 'Amazon CloudFront' }],
        ['PUT', '/m/put'],
        ['HEAD', '/m/head'],
        ['GET', '/s/ok'],
        ['GET', '/s/no-content?status=204'],
        ['GET', '/s/partial?status=203'],
        ['GET', '/f/yes'],
        ['GET', '/f/no?skip=1'],
        ['GET', '/f/missing?status=404'],
        ['GET', '/t/short'],
        ['GET', '/t/long'],
        ['GET', '/n/one'],
        ['GET', '/n/kept?status=404']
      ])
      const want = ['/cf/id', '/cf/ua', '/cf/via', '/f/missing?status=404', '/f/yes', '/m/put', '/n/kept', '/n/one',
        '/s/ok', '/s/partial?status=203', '/t/long', '/t/short']
      await assertTracked(invl, want)
      const score = async (path) => redis.client.command('ZSCORE', '{cfit}:urls', path)
      assert.equal(await score('/t/long'), 'inf')
      const short = Number(await score('/t/short'))
      assert.ok(short >= started + 59_000 && short <= Date.now() + 61_000, `expiry ${short}`)
      const hour = Number(await score('/n/one'))
      assert.ok(hour >= started + 3_599_000 && hour <= Date.now() + 3_601_000, `expiry ${hour}`)
    } finally {
      await server.close()
      await invl.disconnect()
    }
  })

  test('a throwing filter or ttl function never reaches the response or the process', async () => {
    const { lines, logger } = captureLogger()
    const invl = tracker({ logger })
    const mw = invl.middleware({ filter: () => { throw new Error('bad filter') } })
    const mw2 = invl.middleware({ ttl: () => { throw new Error('bad ttl') } })
    const server = await listen((req, res) => {
      mw(req, res, () => mw2(req, res, () => res.end('fine')))
    })
    try {
      await noUnhandledRejections(async () => {
        const res = await fetch(server.url + '/x')
        assert.equal(res.status, 200)
        assert.equal(await res.text(), 'fine')
      })
      assert.ok(lines.some((l) => l.level === 'error' && /bad filter/.test(l.message)), JSON.stringify(lines))
    } finally {
      await server.close()
      await invl.disconnect()
    }
  })

  test('a ttl function that returns no number of seconds: the URL is tracked without a TTL, and the mistake logged once', async () => {
    const { lines, logger } = captureLogger()
    const invl = tracker({ logger })
    const express = require('express')
    const app = express()
    // What `() => process.env.PAGE_TTL` returns when PAGE_TTL is set, and other values no TTL can be made of.
    const returned = { env: '3600', negative: -1, word: 'abc', nan: NaN }
    for (const [name, value] of Object.entries(returned)) app.use(`/${name}`, invl.middleware({ ttl: () => value }))
    app.use('/good', invl.middleware({ ttl: () => 60 }))
    app.all('/{*rest}', (req, res) => res.send('ok'))
    const server = await listen(app)
    try {
      const paths = Object.keys(returned).flatMap((name) => [`/${name}/a`, `/${name}/b`])
      await hit(server.url, paths.map((p) => ['GET', p]))
      // Junk from the internet stays quiet, through a middleware whose ttl is right or wrong.
      const tooLong = '{'.repeat(1500)
      for (const target of [`/good/${tooLong}`, `/env/${tooLong}`]) assert.equal(await rawGet(server.url, target), 200)
      await assertTracked(invl, paths)
      for (const p of paths) assert.equal(await redis.client.command('ZSCORE', '{cfit}:urls', p), 'inf', p)
      assert.deepEqual(lines, [
        'type string ("3600")', 'type number (-1)', 'type string ("abc")', 'type number (NaN)'
      ].map((value) => ({
        level: 'error',
        message: `cf-invalidation-tracker: middleware ttl returned ${value}, not a number of seconds >= 0: URLs it is given for are tracked without a TTL (until they are sent)`
      })))
    } finally {
      await server.close()
      await invl.disconnect()
    }
  })

  test('rejects bad options when it is built', () => {
    const invl = createTracker({ cf: { dist: 'E' }, store: 'memory://', logger: false })
    for (const bad of [{ methods: 'GET' }, { statuses: 200 }, { ttl: '60' }, { filter: true }, { removeOn404: 'yes' }]) {
      assert.throws(() => invl.middleware(bad), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }, JSON.stringify(bad))
    }
    assert.throws(() => invl.middleware({ ttl: -1 }), { name: 'RangeError', code: 'ERR_INVALID_ARG_VALUE' })
    assert.throws(() => require('../lib/middleware').middleware({}), { code: 'ERR_INVALID_ARG_TYPE' })
  })

  test('warns of an option name it does not take, with the one most likely meant', () => {
    const warnings = []
    const logger = { info () {}, error () {}, warn: (m) => warnings.push(m) }
    const invl = createTracker({ cf: { dist: 'E' }, store: 'memory://', logger })
    invl.middleware({ onlyCloudfront: true, methods: ['GET'] })
    invl.middleware({ onlyCloudFront: true, methods: ['GET'], statuses: [200], ttl: 5, filter: () => true, removeOn404: false })
    assert.deepEqual(warnings, ['cf-invalidation-tracker: unknown option middleware.onlyCloudfront ignored (did you mean onlyCloudFront?)'])
  })
})

describe('middleware while Redis is down', () => {
  let redis
  before(async () => { redis = await startRedis() })
  after(async () => { await redis?.stop() })

  const storeFailure = (l) => l.level !== 'info' && /could not write \d+ (tracked URLs|removals).* to the redis store/.test(l.message)

  test('responses come back at once, the process stays up, and tracking resumes when Redis is back', async () => {
    const express = require('express')
    const { lines, logger } = captureLogger()
    const invl = createTracker({ cf: { dist: 'EDIST' }, redis: { url: redis.url }, logger, storeTimeoutMs: 500, flushIntervalMs: 50 })
    const app = express()
    app.use(invl.middleware())
    app.get('/{*rest}', (req, res) => res.send('still here'))
    const server = await listen(app)
    try {
      await hit(server.url, [['GET', '/before']])
      await assertTracked(invl, ['/before'])
      await redis.kill()

      await noUnhandledRejections(async () => {
        for (let i = 0; i < 30; i++) {
          const t0 = Date.now()
          const res = await fetch(`${server.url}/down/${i}`)
          assert.equal(res.status, 200)
          assert.equal(await res.text(), 'still here')
          assert.ok(Date.now() - t0 < 250, `response ${i} took ${Date.now() - t0} ms`)
        }
        // Let the store's failures surface through the logger: the writer says it could not write, and will retry.
        for (let i = 0; i < 100 && !lines.some(storeFailure); i++) await sleep(50)
      }, 500)
      assert.ok(lines.some(storeFailure), `the store failure was logged: ${JSON.stringify(lines)}`)
      const res = await fetch(`${server.url}/after-failure`)
      assert.equal(res.status, 200)

      await redis.restart()
      await hit(server.url, [['GET', '/back']])
      let raw = []
      for (let i = 0; i < 100 && !raw.includes('/back'); i++) {
        await invl.flush().catch(() => {})
        raw = await rawTracked(redis)
        if (!raw.includes('/back')) await sleep(50)
      }
      assert.ok(raw.includes('/back'), `tracked after restart: ${raw}`)
    } finally {
      await server.close()
      await invl.disconnect().catch(() => {})
    }
  })

  test('a flood of 404s while Redis is down is held within bufferCapacity; the removals past it are dropped and logged', async () => {
    const express = require('express')
    const { lines, logger } = captureLogger()
    const invl = createTracker({ cf: { dist: 'EDIST' }, redis: { url: redis.url }, logger, flushIntervalMs: 20, bufferCapacity: 20 })
    const app = express()
    app.use(invl.middleware())
    app.use((req, res) => res.sendStatus(404))
    const server = await listen(app)
    try {
      await redis.kill()
      await noUnhandledRejections(async () => {
        // 60 scanner 404s for a buffer that holds 20 removals.
        const statuses = await hit(server.url, Array.from({ length: 60 }, (_, i) => ['GET', `/scan/${i}`]))
        assert.ok(statuses.every((s) => s === 404), String(statuses))
        for (let i = 0; i < 100 && !lines.some(storeFailure); i++) await sleep(20)
      }, 500)
      assert.ok(lines.some(storeFailure), JSON.stringify(lines))
    } finally {
      await server.close()
    }
    await redis.restart()
    try {
      // The first successful write (the writer's retry, or this flush) logs what was dropped.
      const droppedLine = () => lines.find((l) => l.level === 'warn' && /^cf-invalidation-tracker: \d+ removals were dropped/.test(l.message))
      for (let i = 0; i < 100 && !droppedLine(); i++) {
        await invl.flush().catch(() => {})
        if (!droppedLine()) await sleep(50)
      }
      const dropped = droppedLine()
      assert.ok(dropped, `the dropped removals were logged: ${JSON.stringify(lines)}`)
      assert.ok(Number(dropped.message.match(/(\d+) removals/)[1]) >= 60 - 20, dropped.message)
    } finally {
      await invl.disconnect().catch(() => {})
    }
  })
})
