'use strict'

// The drop-in tracker: the original options and calls, Redis forms and hygiene, errors and the no-crash promise.

const { describe, it, before, after } = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const createTracker = require('..')
const { startEnv, sleep, noUnhandledRejections } = require('./helpers/env')
const { startRedis, freePort } = require('./helpers/services')

let env
before(async () => { env = await startEnv() })
after(async () => { await env.close() })

describe('options', () => {
  const cf = { secret_key: 's', access_key: 'a', dist: 'E123' }
  it('throws the original messages', () => {
    assert.throws(() => createTracker(), { message: 'Missing options' })
    assert.throws(() => createTracker({ redis: true }), { message: 'Missing CloudFront secret key, access key, or distribution ID' })
    assert.throws(() => createTracker({ cf: { secret_key: 's', access_key: 'a' }, redis: true }), { message: /Missing CloudFront/ })
    assert.throws(() => createTracker({ cf: { access_key: 'a', dist: 'E' }, redis: true }), { message: /Missing CloudFront/ })
    assert.throws(() => createTracker({ cf: { ...cf, dist: '   ' }, redis: true }), { message: /Missing CloudFront/ })
    assert.throws(() => createTracker({ cf }), { message: 'Options must contain a store' })
  })

  it('accepts the original forms and does no I/O at construction', () => {
    assert.ok(createTracker({ cf, redis: true }))
    assert.ok(createTracker({ cf, redis: { REDIS_URL: 'redis://127.0.0.1:1' } }))
    assert.ok(createTracker({ cf, redis: { port: 1, hostname: '127.0.0.1', password: 'x' } }))
    assert.ok(createTracker({ cf, redis: { port: '6379', hostname: '127.0.0.1' } }), 'a port from the environment')
    assert.ok(createTracker({ cf, redis: { url: 'rediss://u:p@127.0.0.1:1/2', prefix: 'app' } }))
    assert.ok(createTracker({ cf: { dist: 'E' }, store: 'memory://' }), 'credentials may come from the AWS chain')
  })

  it('warns of option names it does not take, with the one most likely meant; the right ones pass quietly', () => {
    const warnings = []
    const logger = { info () {}, error () {}, warn: (m) => warnings.push(m) }
    createTracker({ cf: { ...cf, acess_key: 'x' }, store: 'memory://', batchsize: 5, dryRun: true, logger })
    createTracker({ cf, redis: { url: 'redis://127.0.0.1:1', database: 3, Prefix: 'app' }, logger })
    createTracker({ cf, redis: { tls: { ca: undefined, servername: 'r' }, sentinel: { name: 'm', nodes: ['redis://127.0.0.1:1'], DB: 1 } }, logger })
    assert.deepEqual(warnings, [
      'cf-invalidation-tracker: unknown option options.batchsize ignored (did you mean batchSize?)',
      'cf-invalidation-tracker: unknown option options.dryRun ignored',
      'cf-invalidation-tracker: unknown option options.cf.acess_key ignored',
      'cf-invalidation-tracker: unknown option options.redis.database ignored (did you mean db?)',
      'cf-invalidation-tracker: unknown option options.redis.Prefix ignored (did you mean prefix?)',
      'cf-invalidation-tracker: unknown option options.redis.tls.servername ignored',
      'cf-invalidation-tracker: unknown option options.redis.sentinel.DB ignored (did you mean db?)'
    ])
    warnings.length = 0
    createTracker({
      cf: { ...cf, region: 'us-east-1', endpoint: 'http://127.0.0.1:1' },
      redis: { url: 'redis://127.0.0.1:1', password: 'p', db: 2, prefix: 'app', tls: { rejectUnauthorized: true }, cluster: false },
      logger, batchSize: 10, maxPaths: 10, maxTrackedUrls: 10, sendTimeoutMs: 10, pollIntervalMs: 10, leaseMs: 10,
      flushIntervalMs: 10, storeTimeoutMs: 10, bufferCapacity: 10, queryStrings: 'keep', indexDocument: 'index.html'
    })
    assert.deepEqual(warnings, [])
  })

  it('warns when redis names no server (a REDIS_URL variable not set, {}), and uses localhost:6379', async () => {
    const warnings = []
    const logger = { info () {}, error () {}, warn: (m) => warnings.push(m) }
    // The original README's example, with REDISTOGO_URL not set.
    const unset = createTracker({ cf, redis: { REDIS_URL: process.env.CFIT_TEST_NOT_SET }, logger })
    createTracker({ cf, redis: {}, logger })
    createTracker({ cf, redis: { url: null, prefix: 'app' }, logger })
    assert.deepEqual(warnings, [
      'cf-invalidation-tracker: options.redis.REDIS_URL is undefined (an environment variable that is not set?), so Redis at localhost:6379 is used',
      'cf-invalidation-tracker: options.redis names no server (no url, REDIS_URL, host or port), so Redis at localhost:6379 is used',
      'cf-invalidation-tracker: options.redis.url is null (an environment variable that is not set?), so Redis at localhost:6379 is used'
    ])
    // Nobody listens there in the tests (a developer's Redis would answer).
    await unset.listUrls().then(() => {}, (err) => assert.match(err.message, /^Redis store at redis:\/\/127\.0\.0\.1:6379: /))
    await unset.disconnect().catch(() => {})
    // redis: true is documented to fall back to localhost; a port, a Sentinel or a cluster's nodes name a server.
    warnings.length = 0
    createTracker({ cf, redis: true, logger })
    createTracker({ cf, redis: { port: 6380 }, logger })
    createTracker({ cf, redis: { sentinel: { name: 'm', nodes: ['redis://127.0.0.1:1'] } }, logger })
    createTracker({ cf, redis: { cluster: ['redis://127.0.0.1:1'] }, logger })
    assert.deepEqual(warnings, [])
  })

  it('points middleware options given to the tracker to middleware()', () => {
    const warnings = []
    const logger = { info () {}, error () {}, warn: (m) => warnings.push(m) }
    createTracker({
      cf, store: 'memory://', logger, onlyCloudfront: true, removeOn404: false, methods: ['GET'], statuses: [200], filter: () => true
    })
    const hint = (name) => ` (a middleware() option? give it as invl.middleware({ ${name} }))`
    assert.deepEqual(warnings, [
      'cf-invalidation-tracker: unknown option options.onlyCloudfront ignored' + hint('onlyCloudFront'),
      'cf-invalidation-tracker: unknown option options.removeOn404 ignored' + hint('removeOn404'),
      'cf-invalidation-tracker: unknown option options.methods ignored' + hint('methods'),
      'cf-invalidation-tracker: unknown option options.statuses ignored' + hint('statuses'),
      'cf-invalidation-tracker: unknown option options.filter ignored' + hint('filter')
    ])
  })

  it('refuses options of the wrong type with Node codes', () => {
    const bad = [
      [{ cf: 'x', redis: true }, TypeError, 'ERR_INVALID_ARG_TYPE'],
      [{ cf, redis: 42 }, TypeError, 'ERR_INVALID_ARG_TYPE'],
      [{ cf, redis: { url: 'http://x' } }, RangeError, 'ERR_INVALID_ARG_VALUE'],
      [{ cf, redis: 'localhost:6379' }, RangeError, 'ERR_INVALID_ARG_VALUE'],
      [{ cf, redis: { port: true } }, TypeError, 'ERR_INVALID_ARG_TYPE'],
      [{ cf, redis: { port: '63 79' } }, TypeError, 'ERR_INVALID_ARG_TYPE'],
      [{ cf, redis: { port: 70000 } }, RangeError, 'ERR_INVALID_ARG_VALUE'],
      [{ cf: { ...cf, dist: 'E123 ' }, redis: true }, RangeError, 'ERR_INVALID_ARG_VALUE'],
      [{ cf: { ...cf, dist: '../E123' }, redis: true }, RangeError, 'ERR_INVALID_ARG_VALUE'],
      [{ cf, store: 'mongo://x' }, RangeError, 'ERR_INVALID_ARG_VALUE'],
      [{ cf, store: 'memory://', batchSize: 0 }, RangeError, 'ERR_INVALID_ARG_VALUE'],
      [{ cf, store: 'memory://', batchSize: 3001 }, RangeError, 'ERR_INVALID_ARG_VALUE'],
      [{ cf, store: 'memory://', batchSize: '10' }, TypeError, 'ERR_INVALID_ARG_TYPE'],
      [{ cf, store: 'memory://', logger: { info () {} } }, TypeError, 'ERR_INVALID_ARG_TYPE'],
      [{ cf, store: 'memory://', queryStrings: 'drop' }, RangeError, 'ERR_INVALID_ARG_VALUE'],
      [{ cf, redis: { port: 6379, db: -1 } }, TypeError, 'ERR_INVALID_ARG_TYPE'],
      [{ cf, redis: { url: 'redis://127.0.0.1:6379/2', db: 3 } }, RangeError, 'ERR_INVALID_ARG_VALUE'],
      [{ cf, redis: { sentinel: { name: 'm', nodes: ['redis://127.0.0.1:26379'] }, db: 1 } }, RangeError, 'ERR_INVALID_ARG_VALUE']
    ]
    for (const [options, Type, code] of bad) {
      assert.throws(() => createTracker(options), (err) => err instanceof Type && err.code === code, JSON.stringify(options))
    }
  })
})

describe('calls', () => {
  it('refuses bad arguments with a clear error and changes nothing', async () => {
    const invl = env.tracker({ redis: { url: env.redis.url, prefix: 'badargs' } })
    await invl.storeUrl('/ok')
    const cases = [
      [() => invl.storeUrl(42), TypeError, 'ERR_INVALID_ARG_TYPE'],
      [() => invl.storeUrl(''), RangeError, 'ERR_INVALID_ARG_VALUE'],
      [() => invl.storeUrl(undefined), TypeError, 'ERR_INVALID_ARG_TYPE'],
      [() => invl.storeUrl('/' + 'a'.repeat(4000)), RangeError, 'ERR_INVALID_ARG_VALUE'],
      [() => invl.storeUrl('/x', -1), RangeError, 'ERR_INVALID_ARG_VALUE'],
      [() => invl.storeUrl('/x', NaN), RangeError, 'ERR_INVALID_ARG_VALUE'],
      [() => invl.storeUrl('/x', Infinity), RangeError, 'ERR_INVALID_ARG_VALUE'],
      [() => invl.storeUrl('/x', '60'), TypeError, 'ERR_INVALID_ARG_TYPE'],
      [() => invl.storeUrl('/x', { wildcard: 'yes' }), TypeError, 'ERR_INVALID_ARG_TYPE'],
      // A misspelt option would track the URL for ever, or as a plain URL: refused.
      [() => invl.storeUrl('/x', { tll: 60 }), RangeError, 'ERR_INVALID_ARG_VALUE'],
      [() => invl.storeUrl('/x', { ttl: 60, wildcrd: true }), RangeError, 'ERR_INVALID_ARG_VALUE'],
      [() => invl.storeUrl('/x', [60]), TypeError, 'ERR_INVALID_ARG_TYPE'],
      [() => invl.storeUrl('/x', new Date()), TypeError, 'ERR_INVALID_ARG_TYPE'],
      [() => invl.setUrlTTL('/ok', -5), RangeError, 'ERR_INVALID_ARG_VALUE'],
      [() => invl.removeUrl(null), TypeError, 'ERR_INVALID_ARG_TYPE'],
      [() => invl.sendInvalidation('now'), TypeError, 'ERR_INVALID_ARG_TYPE'],
      // A dry run asked for in the wrong type is refused, not taken for a real send.
      [() => invl.sendInvalidation({ dryRun: 'true' }), TypeError, 'ERR_INVALID_ARG_TYPE'],
      [() => invl.sendInvalidation({ dryRun: 1 }), TypeError, 'ERR_INVALID_ARG_TYPE'],
      [() => invl.sendInvalidation({ wait: 'yes' }), TypeError, 'ERR_INVALID_ARG_TYPE'],
      // So is one whose name is misspelt.
      [() => invl.sendInvalidation({ dry_run: true }), RangeError, 'ERR_INVALID_ARG_VALUE'],
      [() => invl.sendInvalidation({ dryrun: true }), RangeError, 'ERR_INVALID_ARG_VALUE']
    ]
    await noUnhandledRejections(async () => {
      for (const [call, Type, code] of cases) {
        await assert.rejects(call(), (err) => err instanceof Type && err.code === code)
      }
    })
    assert.deepEqual(await invl.listUrls(), ['/ok'])
  })

  it('removeUrl takes { wildcard } and nothing else: other second arguments are refused, said, and change nothing', async () => {
    const lines = []
    const logger = { info () {}, warn: (m) => lines.push(m), error: (m) => lines.push(m) }
    const invl = createTracker({ cf: { dist: 'E' }, store: 'memory://', logger })
    await invl.storeUrl('/css/', { wildcard: true })
    await invl.storeUrl('/a')
    await noUnhandledRejections(async () => {
      for (const extra of [null, 0, true, [], new Date()]) {
        await assert.rejects(invl.removeUrl('/a', extra), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }, String(extra))
      }
      await assert.rejects(invl.removeUrl('/css/', { wildcrd: true }), { code: 'ERR_INVALID_ARG_VALUE', message: /has no option wildcrd/ })
      await assert.rejects(invl.removeUrl('/css/', { wildcard: 'yes' }), { code: 'ERR_INVALID_ARG_TYPE' })
    })
    assert.equal(lines.length, 7)
    assert.match(lines[0], /^cf-invalidation-tracker: removeUrl failed: The "options" argument must be an object \{ wildcard \}/)
    assert.deepEqual(await invl.listUrls(), ['/a', '/css/*'])
    await invl.removeUrl('/a', {})
    await invl.removeUrl('/css/', { wildcard: true })
    assert.deepEqual(await invl.listUrls(), [])
  })

  it('a call nobody awaits never becomes an unhandled rejection; failures go to the logger', async () => {
    const lines = []
    const logger = { info () {}, warn: (m) => lines.push(m), error: (m) => lines.push(m) }
    const invl = createTracker({ cf: { dist: env.dist, endpoint: env.moto.endpoint }, redis: { url: 'redis://127.0.0.1:1' }, logger })
    await noUnhandledRejections(async () => {
      invl.storeUrl('/a')
      invl.removeUrl('/a')
      invl.setUrlTTL('/a', 10)
      invl.sendInvalidation()
      invl.storeUrl(12)
      await sleep(1500)
    })
    assert.ok(lines.some((l) => /storeUrl failed/.test(l)))
    assert.ok(lines.some((l) => /sendInvalidation failed/.test(l)))
    // Who awaits still gets the rejection, with a stable code.
    await assert.rejects(invl.listUrls(), { code: 'ERR_CFIT_REDIS' })
  })

  it('a logger whose promises reject does not become an unhandled rejection; methods work taken off the tracker', async () => {
    const refuse = async () => { throw new Error('log sink down') }
    const logger = { info: refuse, warn: refuse, error: refuse }
    const invl = createTracker({ cf: { dist: env.dist, endpoint: env.moto.endpoint }, redis: { url: 'redis://127.0.0.1:1' }, logger })
    await noUnhandledRejections(async () => {
      invl.storeUrl('/a')
      invl.sendInvalidation()
      await sleep(1500)
    })
    const { normalize, listDistributions, storeUrl, listUrls } = createTracker({ cf: { dist: env.dist, endpoint: env.moto.endpoint }, store: 'memory://', logger: false })
    assert.equal(normalize('/a b'), '/a%20b')
    assert.ok((await listDistributions()).some((d) => d.id === env.dist))
    await storeUrl('/c')
    assert.deepEqual(await listUrls(), ['/c'])
  })

  it('logs like the original', async () => {
    const lines = []
    const logger = { info: (m) => lines.push(m), warn: (m) => lines.push(m), error: (m) => lines.push(m) }
    const dist = await env.newDistribution()
    const invl = createTracker({ cf: { dist, endpoint: env.moto.endpoint }, store: 'memory://', logger })
    await invl.storeUrl('/a')
    await invl.storeUrl('/b')
    await invl.sendInvalidation()
    await sleep(50)
    assert.ok(lines.includes('Sending invalidation to CloudFront... (2 paths)'), lines.join('\n'))
    assert.ok(lines.includes('Success! 201'))
  })

  it("reports CloudFront's error and keeps the URLs", async () => {
    const invl = env.tracker({ cf: { dist: 'ENOSUCHDIST' }, store: 'memory://' })
    await invl.storeUrl('/a')
    await assert.rejects(invl.sendInvalidation(), (err) => {
      assert.equal(err.code, 'ERR_CFIT_CLOUDFRONT')
      assert.match(err.message, /NoSuchDistribution/)
      assert.equal(err.report.kept, 1)
      return true
    })
    assert.deepEqual(await invl.listUrls(), ['/a'])
  })
})

describe('the Redis store', () => {
  it('never touches keys outside its prefix and keeps them all in one hash slot', async () => {
    const r = env.redis.client
    const before = new Set(await r.command('KEYS', '*'))
    await r.command('SET', 'user:session', 'keep-me')
    await r.command('ZADD', 'urls', '1', '/not-ours')
    const dist = await env.newDistribution()
    const invl = env.tracker({ cf: { dist }, redis: { url: env.redis.url } })
    await invl.storeUrl('/a', 60)
    await invl.storeUrl('/b')
    const during = await r.command('KEYS', '*')
    const added = during.filter((k) => !before.has(k) && k !== 'user:session' && k !== 'urls')
    assert.ok(added.length > 0)
    for (const k of added) assert.match(k, /^\{cfit\}:/)
    await invl.sendInvalidation()
    assert.equal(await r.command('GET', 'user:session'), 'keep-me')
    assert.deepEqual(await r.command('ZRANGE', 'urls', '0', '-1'), ['/not-ours'])
    assert.deepEqual(await env.received(dist), ['/a', '/b'])
    await r.command('DEL', 'user:session', 'urls')
  })

  it('works with a password: the original { port, hostname, password } form, { url, password }, and redis: true', async () => {
    const secured = await startRedis()
    await secured.client.command('CONFIG', 'SET', 'requirepass', 's3cret')
    try {
      const { port } = secured
      const a = env.tracker({ redis: { port, hostname: '127.0.0.1', password: 's3cret', prefix: 'pw' } })
      await a.storeUrl('/pw')
      assert.deepEqual(await a.listUrls(), ['/pw'])
      const wrong = env.tracker({ redis: { port, hostname: '127.0.0.1', password: 'nope', prefix: 'pw' } })
      await assert.rejects(wrong.listUrls(), (err) => err.code === 'ERR_CFIT_REDIS' && !/s3cret|nope/.test(err.message))
      process.env.REDIS_URL = `redis://:s3cret@127.0.0.1:${port}`
      const b = env.tracker({ redis: true, cf: {} })
      assert.deepEqual(await b.listUrls(), [], 'default prefix holds nothing yet')
      const c = env.tracker({ redis: { REDIS_URL: process.env.REDIS_URL, prefix: 'pw' } })
      // An ACL user (Redis 6, ElastiCache RBAC): username beside the password, or named in the URL.
      assert.equal(await secured.client.command('ACL', 'SETUSER', 'app', 'on', '>app pw', '~{pw}:*', '+@all'), 'OK')
      const asApp = env.tracker({ redis: { port, hostname: '127.0.0.1', username: 'app', password: 'app pw', prefix: 'pw' } })
      assert.deepEqual(await asApp.listUrls(), ['/pw'])
      const asAppToo = env.tracker({ redis: { url: `redis://app@127.0.0.1:${port}`, password: 'app pw', prefix: 'pw' } })
      assert.deepEqual(await asAppToo.listUrls(), ['/pw'])
      const notApp = env.tracker({ redis: { url: `redis://127.0.0.1:${port}`, username: 'app', password: 's3cret', prefix: 'pw' } })
      await assert.rejects(notApp.listUrls(), (err) => err.code === 'ERR_CFIT_REDIS' && !/s3cret|app pw/.test(err.message))
      // A database given beside the server, as node-redis takes it.
      const inDb3 = env.tracker({ redis: { port, hostname: '127.0.0.1', password: 's3cret', db: 3, prefix: 'pw' } })
      await inDb3.storeUrl('/db3')
      const inDb3Too = env.tracker({ redis: { url: `redis://:s3cret@127.0.0.1:${port}`, db: '3', prefix: 'pw' } })
      assert.deepEqual(await inDb3Too.listUrls(), ['/db3'])
      assert.equal(await secured.client.command('SELECT', 3), 'OK')
      assert.deepEqual(await secured.client.command('ZRANGE', '{pw}:urls', 0, -1), ['/db3'])
      assert.equal(await secured.client.command('SELECT', 0), 'OK')
      assert.deepEqual(await c.listUrls(), ['/pw'])
      // node-redis's { url, password }: the password goes with a URL that has none; a URL's own credentials win.
      const d = env.tracker({ redis: { url: `redis://127.0.0.1:${port}`, password: 's3cret', prefix: 'pw' } })
      assert.deepEqual(await d.listUrls(), ['/pw'])
      const e = env.tracker({ redis: { url: `redis://:s3cret@127.0.0.1:${port}`, password: 'nope', prefix: 'pw' } })
      assert.deepEqual(await e.listUrls(), ['/pw'])
    } finally {
      delete process.env.REDIS_URL
      await secured.stop()
    }
  })

  it("the original's REDIS_URL with Redis To Go's or Heroku's user name authenticates with its password alone", async () => {
    const secured = await startRedis({ password: 's3cret' })
    const tracker = (redis) => createTracker({ cf: { dist: 'E' }, redis: { ...redis, prefix: 'rtg' }, logger: false })
    const trackers = []
    try {
      for (const user of ['redistogo', 'h']) {
        const invl = tracker({ REDIS_URL: `redis://${user}:s3cret@127.0.0.1:${secured.port}/` })
        trackers.push(invl)
        await invl.storeUrl(`/${user}`)
      }
      assert.deepEqual(await secured.client.command('ZRANGE', '{rtg}:urls', 0, -1), ['/h', '/redistogo'])
      // Given as url, or as a string, a user name is an ACL user (Redis 6), which this server does not have.
      const asUrl = tracker({ url: `redis://redistogo:s3cret@127.0.0.1:${secured.port}/` })
      const asString = createTracker({ cf: { dist: 'E' }, redis: `redis://redistogo:s3cret@127.0.0.1:${secured.port}/`, logger: false })
      trackers.push(asUrl, asString)
      for (const invl of [asUrl, asString]) {
        await assert.rejects(invl.listUrls(), (err) => err.code === 'ERR_CFIT_REDIS' && !err.message.includes('s3cret'))
      }
    } finally {
      await Promise.all(trackers.map((t) => t.disconnect().catch(() => {})))
      await secured.stop()
    }
  })

  it('recovers by itself after a Redis restart', async () => {
    const redis = await startRedis()
    try {
      const invl = env.tracker({ redis: { url: redis.url } })
      await invl.storeUrl('/one')
      await redis.restart()
      // The first call after the restart may fail while reconnecting; without any user action the next works.
      await invl.storeUrl('/two').catch(() => invl.storeUrl('/two'))
      assert.ok((await invl.listUrls()).includes('/two'))
    } finally {
      await redis.stop()
    }
  })

  it('buffers while Redis is down and writes once it is back', async () => {
    const redis = await startRedis()
    try {
      const invl = env.tracker({ redis: { url: redis.url } })
      await invl.storeUrl('/warm')
      await redis.kill()
      await noUnhandledRejections(async () => {
        invl.storeUrl('/while-down')
        await sleep(300)
      })
      await redis.restart()
      await sleep(1500)
      assert.ok((await invl.listUrls()).includes('/while-down'))
    } finally {
      await redis.stop()
    }
  })
})

describe('never crashes the host', () => {
  it('a logger that throws does not take the process down', () => {
    const script = `
      const createTracker = require(${JSON.stringify(path.join(__dirname, '..'))})
      const boom = () => { throw new Error('logger broke') }
      const invl = createTracker({ cf: { dist: 'E' }, redis: { url: 'redis://127.0.0.1:1' }, logger: { info: boom, warn: boom, error: boom } })
      invl.storeUrl('/a')
      invl.sendInvalidation()
      setTimeout(() => { console.log('alive'); process.exit(0) }, 1500)
    `
    const res = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 20000 })
    assert.equal(res.status, 0, res.stderr)
    assert.match(res.stdout, /alive/)
  })

  it('a server that cannot be reached is named in the error and the log, without its password', async () => {
    const port = await freePort()
    const lines = []
    const logger = { info () {}, warn: (m) => lines.push(m), error: (m) => lines.push(m) }
    const invl = createTracker({ cf: { dist: 'E' }, redis: { url: `redis://:hunter2@127.0.0.1:${port}/2` }, logger })
    const named = `Redis store at redis://***@127.0.0.1:${port}/2: `
    await assert.rejects(invl.listUrls(), (err) => err.code === 'ERR_CFIT_REDIS' && err.message.startsWith(named) &&
      /refused/i.test(err.message) && !err.message.includes('hunter2'))
    await assert.rejects(invl.storeUrl('/a'), (err) => err.message.startsWith(named))
    assert.ok(lines.some((line) => line.includes(named)), lines.join('\n'))
    assert.ok(lines.every((line) => !line.includes('hunter2')))
    await invl.disconnect().catch(() => {})
  })

  it('a wrong password, a server that wants one, and a port that is not Redis\'s: named and explained on one line', async () => {
    const redis = await startRedis({ password: 'hunter2' })
    const http = require('node:http').createServer((req, res) => res.end('not redis'))
    await new Promise((resolve) => http.listen(0, '127.0.0.1', resolve))
    const port = new URL(redis.url).port
    const cases = [
      [`redis://:wrong@127.0.0.1:${port}`, `Redis store at redis://***@127.0.0.1:${port}: `, /AuthenticationFailed \(check the password/],
      [`redis://127.0.0.1:${port}`, `Redis store at redis://127.0.0.1:${port}: `, /wants a password/],
      [`redis://127.0.0.1:${http.address().port}`, `Redis store at redis://127.0.0.1:${http.address().port}: `, /is this a Redis port\?\)$/]
    ]
    try {
      for (const [url, named, why] of cases) {
        const invl = createTracker({ cf: { dist: 'E' }, redis: { url }, logger: false })
        const err = await invl.listUrls().then(() => null, (e) => e)
        await invl.disconnect().catch(() => {})
        assert.equal(err?.code, 'ERR_CFIT_REDIS', url)
        assert.ok(err.message.startsWith(named), err.message)
        assert.match(err.message, why)
        assert.ok(!err.message.includes('\n') && !err.message.includes('wrong'), err.message)
      }
    } finally {
      http.close()
      await redis.stop()
    }
  })

  it('errors from the native constructor carry their code, and no password', () => {
    assert.throws(
      () => createTracker({ cf: { dist: 'E' }, redis: { url: 'redis://:hunter2@[bad' } }),
      (err) => err.code === 'ERR_INVALID_ARG_VALUE' && !err.message.includes('hunter2') && !err.message.includes('\u0001')
    )
    assert.throws(
      () => createTracker({ cf: { dist: 'E' }, redis: 'http://:hunter2@redis.internal:6379' }),
      (err) => err.code === 'ERR_INVALID_ARG_VALUE' && !err.message.includes('hunter2')
    )
    // A URL given without its scheme (a slip), its password with a '/' in it, a cluster's node likewise.
    for (const redis of [{ url: 'default:hun/ter2@redis.internal:6379' }, { cluster: ['app:hunter2@node-1:6379'] }]) {
      assert.throws(() => createTracker({ cf: { dist: 'E' }, redis }),
        (err) => err.code === 'ERR_INVALID_ARG_VALUE' && /\*\*\*@/.test(err.message) && !/hunter2|hun\/ter2/.test(err.message))
    }
  })
})

describe('module shape', () => {
  it('exports the factory with named exports, from CommonJS and ESM', () => {
    assert.equal(typeof createTracker, 'function')
    assert.equal(typeof createTracker.Tracker, 'function')
    assert.equal(typeof createTracker.Store, 'function')
    assert.ok(createTracker({ cf: { dist: 'E' }, store: 'memory://' }) instanceof createTracker.Tracker)
    const script = "import createTracker, { Tracker, Store } from 'cf-invalidation-tracker'; " +
      "const t = createTracker({ cf: { dist: 'E' }, store: 'memory://' }); " +
      "if (!(t instanceof Tracker) || typeof Store !== 'function') process.exit(3)"
    const nodePath = path.resolve(__dirname, '..', '..')
    const res = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      cwd: path.join(__dirname, '..'),
      env: { ...process.env, NODE_PATH: nodePath },
      encoding: 'utf8'
    })
    assert.equal(res.status, 0, res.stderr)
  })
})
