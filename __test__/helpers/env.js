'use strict'

// One real Redis and one real moto for a test file, and trackers pointed at them.

const { startRedis, startMoto, useAwsTestEnv } = require('./services')
const createTracker = require('../..')

/** Starts Redis and moto, creates a distribution; `close()` stops both. */
async function startEnv ({ redisArgs } = {}) {
  const restoreEnv = useAwsTestEnv()
  const [redis, moto] = await Promise.all([startRedis({ args: redisArgs }), startMoto()])
  const dist = await moto.createDistribution({ originDomain: 'origin.example.com' })
  const env = {
    redis,
    moto,
    dist: dist.id,
    /** A tracker on this env; `store` defaults to the Redis store. */
    tracker (options = {}) {
      const { cf, ...rest } = options
      const base = { cf: { dist: env.dist, endpoint: moto.endpoint, ...cf }, logger: false }
      if (!rest.store && !rest.redis) base.redis = { url: redis.url }
      return createTracker({ ...base, ...rest })
    },
    /** Every path moto received for the distribution, across invalidations, sorted. */
    async received (distId = env.dist) {
      const all = await moto.allInvalidatedPaths(distId)
      return all.flatMap((i) => i.paths).sort()
    },
    async invalidations (distId = env.dist) {
      return moto.allInvalidatedPaths(distId)
    },
    /** A fresh distribution, so a test counts only what it sent. */
    async newDistribution () {
      const d = await moto.createDistribution({ originDomain: 'origin.example.com' })
      return d.id
    },
    async close () {
      await Promise.allSettled([redis.stop(), moto.stop()])
      restoreEnv()
    }
  }
  return env
}

/** Resolves after `ms`. */
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Fails the test if an unhandledRejection happens while `fn` runs (and a little after). */
async function noUnhandledRejections (fn, settleMs = 300) {
  const seen = []
  const onRejection = (reason) => seen.push(reason)
  process.on('unhandledRejection', onRejection)
  try {
    await fn()
    await sleep(settleMs)
  } finally {
    process.off('unhandledRejection', onRejection)
  }
  if (seen.length) throw new Error(`unhandled rejections: ${seen.map((r) => r && r.message).join('; ')}`)
}

/**
 * Asserts that `call` (by default, storing a URL) fails `times` times with ERR_CFIT_REDIS, its message matching
 * `matches` and never showing `hides` (a password), and that nothing goes unhandled meanwhile, a storeUrl nobody
 * awaits (as the middleware's) included; then disconnects the tracker.
 */
async function failsInRedis (invl, { matches = /./, hides, times = 1, call = (t) => t.storeUrl('/refused.html') } = {}) {
  const assert = require('node:assert/strict')
  await noUnhandledRejections(async () => {
    invl.storeUrl('/served.html').catch(() => {})
    for (let i = 0; i < times; i++) {
      await assert.rejects(call(invl), (err) => {
        assert.equal(err.code, 'ERR_CFIT_REDIS')
        assert.match(err.message, matches)
        if (hides !== undefined) assert.ok(!err.message.includes(hides), err.message)
        return true
      })
    }
    await invl.disconnect().catch(() => {})
  })
}

/** Calls `attempt` until it returns true, flushing `invl` between tries (a failover, say); false after about 30 s. */
async function eventually (invl, attempt) {
  for (let i = 0; i < 120; i++) {
    await invl.flush().catch(() => {})
    if (await attempt().catch(() => false)) return true
    await sleep(250)
  }
  return false
}

module.exports = { startEnv, sleep, noUnhandledRejections, failsInRedis, eventually }
