'use strict'

// The send under faults: every tracked URL reaches CloudFront, none is billed twice (each batch is created once per
// CallerReference), and URLs stored during a send stay tracked. CloudFront is our fault-injecting server here; what it
// received is counted from its side.

const { describe, it, before, after, beforeEach } = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const net = require('node:net')
const { spawn } = require('node:child_process')
const createTracker = require('..')
const { startRedis, useAwsTestEnv } = require('./helpers/services')
const { startFakeCloudFront } = require('./helpers/fake-cloudfront')
const { sleep } = require('./helpers/env')
const { SyncStore } = require('./helpers/stores')

const DIST = 'EFAULTS'
let cf
let redis
let restoreEnv
let prefixes = 0

before(async () => {
  restoreEnv = useAwsTestEnv()
  ;[cf, redis] = await Promise.all([
    startFakeCloudFront({ distributions: [DIST] }),
    startRedis({ args: ['--appendonly', 'yes', '--appendfsync', 'always'] })
  ])
})
after(async () => {
  await Promise.allSettled([cf.stop(), redis.stop()])
  restoreEnv()
})
let customCloudFront = false
beforeEach(async () => {
  if (customCloudFront) {
    await useCloudFront()
    customCloudFront = false
  }
  cf.reset()
})

/** Replaces the CloudFront server, e.g. with in-progress limits of its own; the next test gets a default one again. */
async function useCloudFront (options = {}) {
  await cf.stop()
  cf = await startFakeCloudFront({ distributions: [DIST], ...options })
  customCloudFront = Object.keys(options).length > 0
}

function options (extra = {}) {
  return {
    cf: { dist: DIST, endpoint: cf.endpoint },
    redis: { url: redis.url, prefix: `faults${++prefixes}` },
    logger: false,
    pollIntervalMs: 30,
    leaseMs: 1000,
    sendTimeoutMs: 20000,
    ...extra
  }
}

async function tracked (n, extra) {
  const opts = options(extra)
  const tracker = createTracker(opts)
  const urls = Array.from({ length: n }, (_, i) => `/item/${String(i).padStart(5, '0')}`)
  await Promise.all(urls.map((u) => tracker.storeUrl(u)))
  return { tracker, urls, opts }
}

/** Every URL reached CloudFront exactly once, and each CallerReference made exactly one invalidation. */
function assertDeliveredOnce (urls) {
  const received = cf.pathsReceived(DIST)
  assert.deepEqual([...received].sort(), [...urls].sort(), 'every URL, exactly once')
  const refs = cf.invalidations(DIST).map((i) => i.callerReference)
  assert.equal(new Set(refs).size, refs.length, 'no CallerReference made two invalidations')
}

/** A proxy to Redis that, once armed, lets the next lease renewal run and drops the connection before its answer. */
async function lossyProxy (port) {
  const state = { armed: false, dropped: 0 }
  // The renewal script: EVALSHA, its hash, 2 keys and 3 arguments.
  const RENEW = /^\*8\r\n\$(?:7\r\nEVALSHA|4\r\nEVAL)\r\n/i
  const server = net.createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1')
    let dropAnswer = false
    client.on('data', (d) => {
      if (state.armed && RENEW.test(d.toString('latin1')) && d.includes(':claims\r\n')) dropAnswer = true
      upstream.write(d)
    })
    upstream.on('data', (d) => {
      if (dropAnswer && d[0] === 0x3a) { // ':', an integer: the script ran
        state.armed = false
        state.dropped++
        client.destroy()
        upstream.destroy()
        return
      }
      client.write(d)
    })
    client.on('error', () => upstream.destroy())
    upstream.on('error', () => client.destroy())
    client.on('close', () => upstream.destroy())
    upstream.on('close', () => client.destroy())
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  state.url = `redis://127.0.0.1:${server.address().port}`
  state.close = () => new Promise((resolve) => server.close(resolve))
  return state
}

function creates () {
  return cf.requests.filter((r) => r.op === 'CreateInvalidation')
}

describe('retries', () => {
  for (const [kind, times] of [[503, 5], ['throttle', 5], ['reset', 5]]) {
    it(`${kind} x${times}: retried until accepted`, async () => {
      const { tracker, urls } = await tracked(30)
      cf.fail(kind, { times })
      const report = await tracker.sendInvalidation()
      assertDeliveredOnce(urls)
      assert.equal(report.kept, 0)
      assert.equal(creates().length, times + 1)
      assert.deepEqual(await tracker.listUrls(), [])
    })
  }

  it('accepted but the answer lost: the retry gets the same invalidation back, billed once', async () => {
    const { tracker, urls } = await tracked(10)
    cf.fail('acceptThenReset')
    const report = await tracker.sendInvalidation()
    assert.equal(creates().length, 2)
    assert.equal(cf.invalidations(DIST).length, 1)
    assert.equal(report.batches[0].id, cf.invalidations(DIST)[0].id)
    assertDeliveredOnce(urls)
  })

  it('failures to list invalidations that are not in a row do not end a send waiting for room', async () => {
    await useCloudFront({ inProgressMs: 20000 })
    const cfOpts = { dist: DIST, endpoint: cf.endpoint }
    const other = createTracker({ ...options(), cf: cfOpts, store: 'memory://', redis: undefined })
    await Promise.all(Array.from({ length: 15 }, (_, i) => other.storeUrl(`/other${i}/`, { wildcard: true })))
    await other.sendInvalidation() // 15 wildcards in progress, CloudFront's most, for 20 s
    const tracker = createTracker(options({ cf: cfOpts, sendTimeoutMs: 60000 }))
    await tracker.storeUrl('/mine/', { wildcard: true })
    // 8 listings that fail (every attempt of the SDK's), each after 3 that work
    for (let i = 0; i < 8; i++) cf.fail(503, { op: 'ListInvalidations', times: 3, after: 3 })
    await tracker.sendInvalidation()
    assert.ok(cf.invalidations(DIST).some((i) => i.paths.includes('/mine/*')))
  })

  it('a CloudFront that keeps failing ends the send after 8 tries in a row, not at its deadline; nothing is lost', async () => {
    const { tracker, urls } = await tracked(5)
    cf.fail(503, { times: 1000, op: 'ListInvalidations' })
    const err = await tracker.sendInvalidation().then(() => null, (e) => e)
    assert.equal(err?.code, 'ERR_CFIT_CLOUDFRONT')
    assert.match(err.message, /^CloudFront ServiceUnavailable: /)
    const asked = cf.requests.filter((r) => r.op === 'ListInvalidations').length
    assert.ok(asked >= 8 && asked <= 8 * 3, `${asked} requests (8 tries, each up to 3 attempts of the SDK)`)
    assert.equal(creates().length, 0)
    assert.deepEqual(await tracker.listUrls(), [...urls].sort())
  })

  it('slow answers are waited for', async () => {
    const { tracker, urls } = await tracked(5)
    cf.fail('slow', { delayMs: 1500 })
    await tracker.sendInvalidation()
    assertDeliveredOnce(urls)
  })
})

describe("CloudFront's limits", () => {
  it('TooManyInvalidationsInProgress means wait and retry, not fail', async () => {
    const { tracker, urls } = await tracked(20)
    cf.fail('tooMany', { times: 3 })
    const report = await tracker.sendInvalidation()
    assertDeliveredOnce(urls)
    assert.ok(report.batches[0].retries >= 3)
  })

  it('paces batches against the 3,000 paths in progress, without being refused', async () => {
    await useCloudFront({ inProgressMs: 400 })
    const { tracker, urls } = await tracked(7000, { batchSize: 3000, sendTimeoutMs: 30000 })
    const report = await tracker.sendInvalidation()
    assert.equal(report.batches.length, 3)
    assertDeliveredOnce(urls)
    assert.equal(cf.requests.filter((r) => r.errorCode === 'TooManyInvalidationsInProgress').length, 0)
  })

  it('a send waiting for room asks GetInvalidation about each invalidation in progress once, not at every look', async () => {
    await useCloudFront({ inProgressMs: 1500 })
    // Another application's invalidations of 2,500 paths are in progress for 1.5 s.
    const other = createTracker({ ...options(), redis: undefined, store: 'memory://' })
    await Promise.all(Array.from({ length: 2500 }, (_, i) => other.storeUrl(`/x/${i}`)))
    await other.sendInvalidation()
    const theirs = cf.invalidations(DIST).map((i) => i.id).sort()
    const from = cf.requests.length
    // Three batches of 1,500 paths (3,000 may be in progress): the first waits for theirs to complete, the third for
    // ours.
    const { tracker, urls } = await tracked(4500, { batchSize: 1500 })
    const report = await tracker.sendInvalidation()
    assert.equal(report.batches.length, 3)
    assert.deepEqual(cf.pathsReceived(DIST).filter((p) => !p.startsWith('/x/')).sort(), urls)
    const requests = cf.requests.slice(from)
    const looks = requests.filter((r) => r.op === 'ListInvalidations').length
    assert.ok(looks >= 10, `the send looked ${looks} times`)
    const asked = requests.filter((r) => r.op === 'GetInvalidation').map((r) => r.path.split('/').pop()).sort()
    assert.deepEqual(asked, theirs, 'only about the invalidations it did not create, each once')
    assert.equal(cf.requests.filter((r) => r.errorCode === 'TooManyInvalidationsInProgress').length, 0)
  })

  it('without permission to list invalidations, sends anyway and relies on CloudFront refusing', async () => {
    const lines = []
    const { tracker, urls } = await tracked(10, { logger: { info () {}, warn: (m) => lines.push(m), error () {} } })
    cf.fail('accessDenied', { op: 'ListInvalidations', times: 5 })
    await tracker.sendInvalidation()
    assertDeliveredOnce(urls)
    assert.ok(lines.some((l) => /ListInvalidations/.test(l)))
  })

  it('keeps wildcards within 15 in progress', async () => {
    const tracker = createTracker(options())
    const wildcards = Array.from({ length: 20 }, (_, i) => `/dir${i}/`)
    await Promise.all(wildcards.map((w) => tracker.storeUrl(w, { wildcard: true })))
    const report = await tracker.sendInvalidation()
    assert.equal(report.batches.length, 2)
    assert.ok(report.batches.every((b) => b.paths.length <= 15))
    assert.deepEqual([...cf.pathsReceived(DIST)].sort(), wildcards.map((w) => `${w}*`).sort())
    assert.equal(cf.requests.filter((r) => r.errorCode === 'TooManyInvalidationsInProgress').length, 0)
  })

  it('BatchTooLarge splits the batch', async () => {
    const { tracker, urls } = await tracked(100)
    cf.fail('batchTooLarge')
    const report = await tracker.sendInvalidation()
    assertDeliveredOnce(urls)
    assert.equal(cf.invalidations(DIST).length, 2)
    assert.equal(report.batches.length, 1)
    assert.match(report.batches[0].id, /,/)
  })

  it('a split batch refused part-way is kept, and its report names the part CloudFront made', async () => {
    const { tracker, urls } = await tracked(100)
    cf.fail('batchTooLarge')
    cf.fail('accessDenied', { after: 1 }) // one half goes through, the other is refused
    await assert.rejects(tracker.sendInvalidation(), (err) => {
      assert.equal(err.code, 'ERR_CFIT_CLOUDFRONT')
      const [batch] = err.report.batches
      assert.equal(batch.status, 'Kept')
      const made = cf.invalidations(DIST)
      assert.equal(made.length, 1)
      assert.equal(batch.id, made[0].id)
      assert.equal(batch.callerReference, made[0].callerReference)
      assert.equal(err.report.kept, 100)
      return true
    })
    await sleep(1100) // the failed send's lease runs out
    // CloudFront would take the batch whole now: it is sent as the same halves, and the half made is got back.
    const report = await tracker.sendInvalidation()
    assertDeliveredOnce(urls)
    assert.equal(cf.invalidations(DIST).length, 2)
    assert.equal(report.billedPaths, 50)
  })

  it('a sender killed after CloudFront made one half of a split batch: the next send sends the other half only', async () => {
    const { tracker, urls, opts } = await tracked(100)
    cf.fail('batchTooLarge')
    cf.fail('accessDenied', { after: 1, delayMs: 3000 }) // the first half is made; the second hangs
    const child = spawn(process.execPath, [path.join(__dirname, 'helpers', 'sender.js'), JSON.stringify(opts)], { stdio: 'ignore' })
    for (let i = 0; i < 400 && creates().length < 3; i++) await sleep(10)
    assert.equal(cf.invalidations(DIST).length, 1, 'half made')
    child.kill('SIGKILL')
    await new Promise((resolve) => child.once('exit', resolve))
    await sleep(1100) // its lease runs out
    await tracker.sendInvalidation()
    assertDeliveredOnce(urls)
  })

  it('of a split batch resumed after one part was made, a URL served again is sent again only if its part was made before', async () => {
    const { tracker } = await tracked(100)
    cf.fail('batchTooLarge')
    cf.fail('accessDenied', { after: 1 }) // the first half (/item/00000…49) is made, the second refused
    await assert.rejects(tracker.sendInvalidation(), { code: 'ERR_CFIT_CLOUDFRONT' })
    await sleep(1100) // the failed send's lease runs out
    // Served again: a URL of the half made before, and one of the half not made yet.
    await Promise.all(['/item/00000', '/item/00099'].map((u) => tracker.storeUrl(u)))
    const servedAgain = Date.now()
    await tracker.sendInvalidation() // sent as the same halves: the first is got back, the second made now
    const since = cf.invalidations(DIST).filter((i) => i.createTime.getTime() >= servedAgain).flatMap((i) => i.paths)
    assert.ok(since.includes('/item/00099'), 'its half was made after it was served again')
    assert.deepEqual(since.filter((p) => p === '/item/00000' || p === '/item/00099').sort(), ['/item/00000', '/item/00099'],
      'each once: /item/00000 again on its own, /item/00099 in its half only')
    assert.deepEqual(await tracker.listUrls(), [])
  })

  it('a deadline that passes keeps the rest for later', async () => {
    const { tracker, urls } = await tracked(10, { sendTimeoutMs: 400 })
    cf.fail('tooMany', { times: 1000 })
    await assert.rejects(tracker.sendInvalidation(), (err) => {
      assert.equal(err.code, 'ERR_CFIT_TIMEOUT')
      assert.equal(err.report.kept, 10)
      return true
    })
    assert.deepEqual(await tracker.listUrls(), urls)
    cf.reset()
    await sleep(1100) // the lease of the failed send runs out
    const report = await tracker.sendInvalidation()
    assert.equal(report.resumed, 1)
    assertDeliveredOnce(urls)
  })

  it('a CloudFront that does not answer cannot hold a send past its deadline: the SDK\'s own timeouts are longer', async () => {
    for (const op of ['ListInvalidations', 'CreateInvalidation']) {
      cf.reset()
      const { tracker, urls } = await tracked(3, { sendTimeoutMs: 1000 })
      cf.fail('slow', { op, delayMs: 15000, times: 10 })
      const started = Date.now()
      await assert.rejects(tracker.sendInvalidation(), (err) => {
        assert.equal(err.code, 'ERR_CFIT_TIMEOUT', `${op}: ${err.message}`)
        assert.equal(err.report.kept, 3)
        return true
      })
      // The SDK alone would wait 30 s an attempt, three attempts.
      assert.ok(Date.now() - started < 10000, `${op}: the send took ${Date.now() - started} ms`)
      assert.deepEqual(await tracker.listUrls(), urls)
      await tracker.disconnect()
    }
  })
})

describe('failures part-way', () => {
  it('access denied on the second batch: the first is not sent again, the rest stays tracked', async () => {
    const { tracker, urls } = await tracked(25, { batchSize: 10 })
    // The first batch goes through; then CloudFront refuses.
    cf.fail('accessDenied', { after: 1 })
    await assert.rejects(tracker.sendInvalidation(), (err) => {
      assert.equal(err.code, 'ERR_CFIT_CLOUDFRONT')
      assert.match(err.message, /AccessDenied/)
      assert.equal(err.report.batches[0].status, 'InProgress')
      assert.equal(err.report.kept, 15)
      return true
    })
    assert.equal((await tracker.listUrls()).length, 15)
    await sleep(1100)
    const report = await tracker.sendInvalidation()
    assert.equal(report.resumed, 2)
    assertDeliveredOnce(urls)
    assert.deepEqual(await tracker.listUrls(), [])
  })

  it('URLs stored while a send runs are still tracked after it', async () => {
    const { tracker, urls, opts } = await tracked(5)
    const other = createTracker(opts) // another server process on the same Redis
    cf.fail('slow', { delayMs: 600 })
    const sending = tracker.sendInvalidation()
    await sleep(150)
    await other.storeUrl('/arrived-during-send')
    await other.storeUrl(urls[0]) // served again during the send: must be invalidated again next time
    await sending
    assertDeliveredOnce(urls)
    assert.deepEqual(await tracker.listUrls(), ['/arrived-during-send', urls[0]].sort())
  })

  it('Redis restarted mid-send: nothing lost, nothing billed twice', async () => {
    const { tracker, urls } = await tracked(30, { batchSize: 10 })
    cf.fail('slow', { delayMs: 700 })
    const sending = tracker.sendInvalidation().then((r) => ({ r }), (e) => ({ e }))
    await sleep(200)
    await redis.restart() // persistent: the data survives, connections do not
    const first = await sending
    if (first.e) {
      // The store failed mid-send: the claim stays and the next send resumes it.
      assert.equal(first.e.code, 'ERR_CFIT_REDIS')
      await sleep(1100)
      await tracker.sendInvalidation()
    }
    assertDeliveredOnce(urls)
    assert.deepEqual(await tracker.listUrls(), [])
  })

  it('a sender killed with SIGKILL between batches: the next send resumes, nothing sent twice', async () => {
    await useCloudFront({ inProgressMs: 60000, maxInProgressPaths: 10 })
    const { tracker, urls, opts } = await tracked(30, { batchSize: 10 })
    const child = spawn(process.execPath, [path.join(__dirname, 'helpers', 'sender.js'), JSON.stringify(opts)], { stdio: 'ignore' })
    // Batch one is accepted; batch two waits for room (10 paths in progress): kill the sender there.
    for (let i = 0; i < 400 && creates().length < 1; i++) await sleep(25)
    assert.equal(cf.invalidations(DIST).length, 1)
    await sleep(200)
    child.kill('SIGKILL')
    await new Promise((resolve) => child.once('exit', resolve))
    cf.completeAll()
    await sleep(1100) // its lease runs out
    const pending = await tracker.listUrls()
    assert.equal(pending.length, 20, 'the unsent batches are still tracked')
    // CloudFront finishes invalidations as they come now.
    const finishing = setInterval(() => cf.completeAll(), 20)
    const report = await tracker.sendInvalidation().finally(() => clearInterval(finishing))
    assert.equal(report.resumed, 2)
    assertDeliveredOnce(urls)
  })

  it('a URL served again while earlier sends kept failing is sent once when they succeed', async () => {
    const { tracker, opts } = await tracked(0)
    const server = createTracker(opts)
    for (let round = 0; round < 3; round++) {
      await server.storeUrl('/index.html')
      cf.fail('accessDenied')
      await assert.rejects(tracker.sendInvalidation(), { code: 'ERR_CFIT_CLOUDFRONT' })
      await sleep(1100) // the failed send's lease runs out
    }
    await server.storeUrl('/index.html')
    const report = await tracker.sendInvalidation()
    assert.deepEqual(cf.pathsReceived(DIST), ['/index.html'])
    assert.equal(report.paths, 1)
    assert.deepEqual(await tracker.listUrls(), [])
  })

  for (const kind of ['redis', 'memory', 'custom']) {
    for (const failedBetween of [false, true]) {
      const title = `a URL served again after a lost answer made its invalidation is invalidated again${failedBetween ? ', after another send failed' : ''} (${kind})`
      it(title, async () => {
        const opts = kind === 'redis' ? options() : { ...options(), redis: undefined, store: kind === 'memory' ? 'memory://' : new SyncStore() }
        const tracker = createTracker(opts)
        await Promise.all(['/x', '/y'].map((u) => tracker.storeUrl(u)))
        // CloudFront makes the invalidation but its answer is lost; the retry is refused: the batch is kept.
        cf.fail('acceptThenReset')
        cf.fail('accessDenied')
        await assert.rejects(tracker.sendInvalidation(), { code: 'ERR_CFIT_CLOUDFRONT' })
        assert.equal(cf.invalidations(DIST).length, 1, 'CloudFront made it')
        await sleep(1100) // the failed send's lease runs out
        const servedAgain = Date.now()
        await Promise.all(['/x', '/z'].map((u) => tracker.storeUrl(u)))
        if (failedBetween) {
          // The kept batch is refused again: the new claim of /x and /z is given back untried.
          cf.fail('accessDenied')
          await assert.rejects(tracker.sendInvalidation(), { code: 'ERR_CFIT_CLOUDFRONT' })
          await sleep(1100)
        }
        const report = await tracker.sendInvalidation()
        assert.equal(report.resumed, 1)
        assert.equal(report.billedPaths, 2, 'the resumed batch was billed when CloudFront made it, in the first send')
        assert.equal(report.billedThisMonth, 4, 'and is counted once')
        const after = cf.invalidations(DIST).filter((i) => i.createTime.getTime() >= servedAgain)
        assert.deepEqual(after.flatMap((i) => i.paths).sort(), ['/x', '/z'], 'what was served since, once')
        assert.deepEqual(await tracker.listUrls(), [])
      })
    }
  }

  for (const kind of ['redis', 'memory', 'custom']) {
    it(`a URL served again within the second its lost-answer invalidation was made is invalidated again (${kind})`, async () => {
      const opts = kind === 'redis' ? options() : { ...options(), redis: undefined, store: kind === 'memory' ? 'memory://' : new SyncStore() }
      const tracker = createTracker(opts)
      await tracker.storeUrl('/x')
      await tracker.flush()
      for (let i = 0; i < 200 && Date.now() % 1000 > 30; i++) await sleep(5) // all within one second
      // CloudFront makes the invalidation but its answer is lost; the retry is refused: the batch is kept.
      cf.fail('acceptThenReset')
      cf.fail('accessDenied')
      await assert.rejects(tracker.sendInvalidation(), { code: 'ERR_CFIT_CLOUDFRONT' })
      const servedAgain = Date.now()
      await tracker.storeUrl('/x') // the cache may hold the old page again
      await tracker.sendInvalidation() // resumes the kept claim at once
      const after = cf.invalidations(DIST).filter((i) => i.createTime.getTime() >= servedAgain)
      assert.deepEqual(after.flatMap((i) => i.paths), ['/x'], 'invalidated after it was served again')
      assert.deepEqual(await tracker.listUrls(), [])
    })
  }

  it('a sender killed after resuming a kept claim and claiming a URL served again: the next send bills the URL once', async () => {
    const opts = options()
    const tracker = createTracker(opts)
    await tracker.storeUrl('/x')
    cf.fail('accessDenied')
    await assert.rejects(tracker.sendInvalidation(), { code: 'ERR_CFIT_CLOUDFRONT' }) // claim A of /x, planned, kept
    await sleep(1100) // A's lease runs out
    await Promise.all(['/x', '/y'].map((u) => tracker.storeUrl(u))) // /x served again
    // A sender resumes A and claims B of /x and /y; CloudFront refuses A's batch, slowly; the sender dies meanwhile,
    // before planning B.
    cf.fail('accessDenied', { delayMs: 3000 })
    const child = spawn(process.execPath, [path.join(__dirname, 'helpers', 'sender.js'), JSON.stringify(opts)], { stdio: 'ignore' })
    for (let i = 0; i < 400 && creates().length < 2; i++) await sleep(10)
    assert.equal(creates().length, 2, "the sender sent A's batch")
    child.kill('SIGKILL')
    await new Promise((resolve) => child.once('exit', resolve))
    await sleep(1100) // both leases run out: A's (planned) and B's (never planned)
    assert.equal(await redis.client.command('ZCARD', `{${opts.redis.prefix}}:claims`), 2)
    cf.reset()
    await tracker.sendInvalidation()
    // A's batch is made now, after /x was served again: it covers it.
    assert.deepEqual(cf.invalidations(DIST).map((i) => i.paths), [['/x'], ['/y']])
    assert.deepEqual(await tracker.listUrls(), [])
  })


  it('a sender that stalled past its lease leaves alone the claim another sender resumed meanwhile', async () => {
    const opts = options()
    const claimsKey = `{${opts.redis.prefix}}:claims`
    const tracker = createTracker(opts)
    await tracker.storeUrl('/k')
    cf.fail('accessDenied')
    await assert.rejects(tracker.sendInvalidation(), { code: 'ERR_CFIT_CLOUDFRONT' }) // claim K of /k, planned, kept
    await sleep(1100)
    await Promise.all(['/n1', '/n2'].map((u) => tracker.storeUrl(u)))
    // Sender X resumes K and claims N; CloudFront refuses K's batch after 2.5 s, and X is stopped meanwhile (a long
    // pause, a frozen VM): its leases run out.
    cf.fail('accessDenied', { delayMs: 2500 })
    const x = spawn(process.execPath, [path.join(__dirname, 'helpers', 'sender.js'), JSON.stringify(opts)], { stdio: ['ignore', 'pipe', 'ignore'] })
    let out = ''
    x.stdout.on('data', (d) => { out += d })
    const xDone = new Promise((resolve) => x.once('exit', resolve))
    for (let i = 0; i < 400 && creates().length < 2; i++) await sleep(10)
    x.kill('SIGSTOP')
    const [, n] = await redis.client.command('ZRANGE', claimsKey, '0', '-1')
    assert.ok(n, 'X claimed N')
    await sleep(1200)
    // Y resumes K and N (its lease of 6 s renewed every 2 s): K goes through, N's batch is slow.
    cf.fail('slow', { delayMs: 3000, after: 1 })
    const y = createTracker({ ...opts, leaseMs: 6000 })
    const sendingY = y.sendInvalidation()
    for (let i = 0; i < 400 && creates().length < 4; i++) await sleep(10)
    x.kill('SIGCONT')
    await xDone
    assert.equal(JSON.parse(out).error.code, 'ERR_CFIT_CLOUDFRONT', 'X failed on K, and gave N back')
    assert.ok(Number(await redis.client.command('ZSCORE', claimsKey, n)) > Date.now(), "Y's lease of N stands")
    const reportZ = await createTracker(opts).sendInvalidation()
    const reportY = await sendingY
    assert.equal(reportZ.resumed, 0, 'Z did not take over the claim Y was sending')
    assert.equal(creates().filter((r) => r.paths.includes('/n1')).length, 1, "N's batch sent once")
    assert.deepEqual([...cf.pathsReceived(DIST)].sort(), ['/k', '/n1', '/n2'])
    assert.equal(reportY.billedPaths + reportZ.billedPaths, 3)
    assert.deepEqual(await tracker.listUrls(), [])
  })

  it('a renewal whose answer was lost does not cost the sender its claim: no other sender resumes it meanwhile', async () => {
    const proxy = await lossyProxy(Number(new URL(redis.url).port))
    try {
      const opts = options({ leaseMs: 1500 }) // renewed every 500 ms
      const claimsKey = `{${opts.redis.prefix}}:claims`
      const a = createTracker({ ...opts, redis: { ...opts.redis, url: proxy.url } })
      await a.storeUrl('/r')
      await a.flush()
      cf.fail('slow', { delayMs: 6000 }) // A waits 6 s for CloudFront's answer
      const sendingA = a.sendInvalidation()
      for (let i = 0; i < 400 && creates().length < 1; i++) await sleep(10)
      assert.equal(creates().length, 1, 'A sent its batch')
      proxy.armed = true
      for (let i = 0; i < 300 && proxy.dropped === 0; i++) await sleep(10)
      assert.equal(proxy.dropped, 1, "a renewal's answer was lost")
      await sleep(2500) // past the lease that renewal gave
      const [id] = await redis.client.command('ZRANGE', claimsKey, '0', '-1')
      const leftMs = Number(await redis.client.command('ZSCORE', claimsKey, id)) - Date.now()
      const reportB = await createTracker(options({ redis: opts.redis })).sendInvalidation()
      const reportA = await sendingA
      assert.ok(leftMs > 0, "A's lease stands")
      assert.equal(reportB.resumed, 0)
      assert.equal(creates().filter((r) => r.paths.includes('/r')).length, 1)
      assert.equal(reportA.billedPaths + reportB.billedPaths, 1)
    } finally {
      await proxy.close()
    }
  })

  it('a sender keeps the leases of every claim it holds while it waits on one: no other sender takes them, nothing is billed twice', async () => {
    // Room for three paths in progress, each invalidation in progress for 3 s.
    await useCloudFront({ inProgressMs: 3000, maxInProgressPaths: 3 })
    const { tracker: a, opts } = await tracked(0)
    await Promise.all(['/old/1', '/old/2', '/both'].map((u) => a.storeUrl(u)))
    cf.fail('accessDenied')
    await assert.rejects(a.sendInvalidation(), { code: 'ERR_CFIT_CLOUDFRONT' }) // its claim is kept, for later
    await sleep(1100) // and its lease runs out
    await Promise.all(['/new/1', '/new/2', '/both'].map((u) => a.storeUrl(u)))
    // Another application fills the distribution's room for 3 s.
    const other = createTracker({ ...options(), cf: { dist: DIST, endpoint: cf.endpoint }, store: 'memory://', redis: undefined })
    await Promise.all(['/x/1', '/x/2', '/x/3'].map((u) => other.storeUrl(u)))
    await other.sendInvalidation()
    // A resumes the old claim and makes a new one, and waits for room for the old one far longer than the 1 s lease.
    // B, sending meanwhile, must find both claims held.
    const sendA = a.sendInvalidation()
    await sleep(1800)
    const reportB = await createTracker(opts).sendInvalidation()
    assert.equal(reportB.paths, 0, 'B found nothing of its own to send')
    const reportA = await sendA
    assert.equal(reportA.resumed, 1)
    const received = cf.pathsReceived(DIST).filter((p) => !p.startsWith('/x/'))
    assert.deepEqual([...received].sort(), ['/both', '/new/1', '/new/2', '/old/1', '/old/2'], 'each path once')
    assert.deepEqual(await a.listUrls(), [])
  })

  for (const kind of ['redis', 'memory']) {
    it(`setUrlTTL(url, 0) during a send that gives back its claim of that URL still keeps it until sent (${kind})`, async () => {
      const opts = kind === 'redis' ? options() : { ...options(), redis: undefined, store: 'memory://' }
      const tracker = createTracker(opts)
      await tracker.storeUrl('/a')
      cf.fail('accessDenied')
      await assert.rejects(tracker.sendInvalidation(), { code: 'ERR_CFIT_CLOUDFRONT' }) // /a kept, planned
      await tracker.storeUrl('/u', 2) // tracked for 2 s
      cf.fail('accessDenied', { delayMs: 300 }) // CloudFront refuses /a's resumed batch again, slowly
      const sending = tracker.sendInvalidation() // claims /u too; gives that claim back untried when /a fails
      for (let i = 0; i < 200 && cf.requests.filter((r) => r.op === 'CreateInvalidation').length < 2; i++) await sleep(5)
      await tracker.setUrlTTL('/u', 0) // keep /u until it is sent
      await assert.rejects(sending, { code: 'ERR_CFIT_CLOUDFRONT' })
      await sleep(2500) // its old TTL passes
      assert.deepEqual(await tracker.listUrls(), ['/a', '/u'])
      await tracker.sendInvalidation()
      assert.deepEqual([...cf.pathsReceived(DIST)].sort(), ['/a', '/u'])
    })
  }

  for (const kind of ['redis', 'memory', 'custom']) {
    it(`while CloudFront keeps refusing, failed sends leave one claim behind, not one each (${kind})`, async () => {
      const stores = { redis: undefined, memory: 'memory://', custom: new SyncStore() }
      const opts = kind === 'redis' ? options() : { ...options(), redis: undefined, store: stores[kind] }
      const tracker = createTracker(opts)
      const urls = ['/index.html']
      cf.fail('accessDenied', { times: 1000 })
      for (let round = 0; round < 6; round++) {
        urls.push(`/page/${round}`)
        await Promise.all(['/index.html', `/page/${round}`].map((u) => tracker.storeUrl(u)))
        await assert.rejects(tracker.sendInvalidation(), { code: 'ERR_CFIT_CLOUDFRONT' })
        await sleep(1100) // the failed send's lease runs out
      }
      if (kind === 'redis') assert.equal(await redis.client.command('ZCARD', `{${opts.redis.prefix}}:claims`), 1)
      assert.deepEqual(await tracker.listUrls(), [...urls].sort(), 'every URL still tracked')
      cf.reset() // CloudFront accepts again
      const report = await tracker.sendInvalidation()
      assert.equal(report.resumed, 1)
      assert.equal(creates().length, 2, 'the kept claim and the URLs tracked since: a request each')
      assertDeliveredOnce(urls)
      assert.deepEqual(await tracker.listUrls(), [])
    })
  }

  it('a path CloudFront refuses is found, dropped and reported; the rest of its batch goes through', async () => {
    const { tracker, urls } = await tracked(40, { batchSize: 20 })
    cf.refusePaths((p) => p === '/item/00013')
    const report = await tracker.sendInvalidation()
    assert.deepEqual(report.rejected, ['/item/00013'])
    assert.deepEqual([...cf.pathsReceived(DIST)].sort(), urls.filter((u) => u !== '/item/00013'))
    assert.equal(report.paths, 39)
    // Each batch lists the paths its invalidations hold, as CloudFront has them.
    const held = cf.invalidations(DIST).flatMap((i) => i.paths)
    assert.deepEqual(report.batches.flatMap((b) => b.paths).sort(), [...held].sort())
    assert.deepEqual(report.batches.map((b) => b.status), ['InProgress', 'InProgress'])
    assert.equal((await tracker.sendInvalidation({ dryRun: true })).billedThisMonth, 39, 'the refused path is not billed')
    assert.deepEqual(await tracker.listUrls(), [], 'the refused path does not block later sends')
    const refs = cf.invalidations(DIST).map((i) => i.callerReference)
    assert.equal(new Set(refs).size, refs.length)
  })

  it('a refused path that is all there is to send is dropped too, and does not hold back later sends', async () => {
    const { tracker } = await tracked(0)
    await tracker.storeUrl('/bad')
    cf.refusePaths((p) => p === '/bad')
    const report = await tracker.sendInvalidation()
    assert.deepEqual(report.rejected, ['/bad'])
    assert.deepEqual(report.batches.map((b) => [b.status, b.paths]), [['Rejected', []]])
    await tracker.storeUrl('/good')
    await tracker.sendInvalidation()
    assert.deepEqual(cf.pathsReceived(DIST), ['/good'])
    assert.deepEqual(await tracker.listUrls(), [])
  })

  it('two senders racing on one Redis send each URL once between them', async () => {
    await useCloudFront()
    const { urls, opts } = await tracked(3000, { batchSize: 500 })
    const run = () => new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [path.join(__dirname, 'helpers', 'sender.js'), JSON.stringify(opts)])
      let out = ''
      child.stdout.on('data', (d) => { out += d })
      child.on('error', reject)
      child.on('exit', () => resolve(JSON.parse(out)))
    })
    const [a, b] = await Promise.all([run(), run()])
    assert.equal(a.error, undefined)
    assert.equal(b.error, undefined)
    assert.equal(a.report.paths + b.report.paths, 3000)
    assertDeliveredOnce(urls)
  })
})

describe('reports', () => {
  it('wait: true polls until every batch is completed', async () => {
    await useCloudFront({ inProgressMs: 300 })
    const { tracker } = await tracked(15, { batchSize: 10 })
    const report = await tracker.sendInvalidation({ wait: true })
    assert.deepEqual(report.batches.map((b) => b.status), ['Completed', 'Completed'])
    assert.ok(cf.requests.some((r) => r.op === 'GetInvalidation'))
  })

  it('wait: true stops at once when CloudFront will not say how an invalidation goes (AccessDenied)', async () => {
    await useCloudFront({ inProgressMs: 60_000 })
    const { tracker, urls } = await tracked(5)
    cf.fail('accessDenied', { op: 'GetInvalidation', times: 1000 })
    const started = Date.now()
    await assert.rejects(tracker.sendInvalidation({ wait: true }), (err) => {
      assert.equal(err.code, 'ERR_CFIT_CLOUDFRONT')
      assert.match(err.message, /AccessDenied.*which was sent: not waiting for it/)
      assert.equal(err.report.kept, 0)
      assert.deepEqual(err.report.batches.map((b) => b.status), ['InProgress'])
      return true
    })
    assert.ok(Date.now() - started < 10_000, 'not the 20 s deadline')
    assertDeliveredOnce(urls)
    assert.deepEqual(await tracker.listUrls(), [], 'what was sent is not tracked any more')
  })

  it('a dry run sends and changes nothing', async () => {
    const { tracker, urls } = await tracked(12, { batchSize: 5 })
    const report = await tracker.sendInvalidation({ dryRun: true })
    assert.equal(report.batches.length, 3)
    assert.equal(report.paths, 12)
    assert.equal(creates().length, 0)
    assert.deepEqual(await tracker.listUrls(), urls)
  })
})
