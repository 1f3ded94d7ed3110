'use strict'

// The Redis store on the master Redis Sentinel names: a real master, its replica and a Sentinel on loopback ports,
// with failovers; moto as CloudFront.

const { test, describe, before, after } = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')

const createTracker = require('..')
const { startRedisSentinel, startMoto, useAwsTestEnv, awsTestEnv, freePort, tlsCertificates } = require('./helpers/services')
const { parseOptions } = require('../lib/options')
const { failsInRedis, eventually } = require('./helpers/env')
const { runNode } = require('./helpers/run')

const BIN = path.join(__dirname, '..', 'bin', 'cf-invalidation-tracker.js')

describe('Redis Sentinel', () => {
  let moto
  let restoreEnv
  before(async () => {
    restoreEnv = useAwsTestEnv()
    moto = await startMoto()
  })
  after(async () => {
    await moto?.stop()
    restoreEnv?.()
  })

  const tracker = (sentinel, prefix, extra = {}) => createTracker({
    cf: { dist: extra.dist ?? 'E1', endpoint: moto.endpoint },
    redis: { sentinel: { name: sentinel.name, nodes: [sentinel.url] }, prefix },
    logger: false
  })
  const tracked = (server, prefix) => server.client.command('ZRANGE', `{${prefix}}:urls`, 0, -1)

  test('URLs go to the master the Sentinel names, and after a failover to the new one; a send invalidates them all', async () => {
    const sentinel = await startRedisSentinel()
    const { id: dist } = await moto.createDistribution({ originDomain: 'origin.example.com' })
    const invl = tracker(sentinel, 's1', { dist })
    try {
      const first = await sentinel.master()
      await invl.storeUrl('/before.html')
      assert.deepEqual(await tracked(first, 's1'), ['/before.html'])

      const promoted = await sentinel.failover()
      assert.notEqual(promoted.port, first.port)
      invl.storeUrl('/after.html').catch(() => {}) // the old master may drop it first: the writer retries
      assert.ok(await eventually(invl, async () => (await tracked(promoted, 's1')).includes('/after.html')),
        'written to the new master')
      assert.deepEqual((await tracked(promoted, 's1')).sort(), ['/after.html', '/before.html'])

      const report = await invl.sendInvalidation()
      assert.equal(report.paths, 2)
      assert.deepEqual((await moto.allInvalidatedPaths(dist)).flatMap((i) => i.paths).sort(), ['/after.html', '/before.html'])
      assert.deepEqual(await tracked(promoted, 's1'), [])
    } finally {
      await invl.disconnect().catch(() => {})
      await sentinel.stop()
    }
  })

  test('a URL the old master took but the promoted replica lacks (replication lag) is written again when served again',
    async () => {
      const sentinel = await startRedisSentinel({ writableReplica: true })
      const invl = tracker(sentinel, 's2')
      try {
        const first = await sentinel.master()
        const replica = sentinel.servers.find((s) => s !== first)
        await Promise.all([invl.storeUrl('/lagging.html'), invl.storeUrl('/replicated.html')])
        assert.ok(await eventually(invl, async () => (await tracked(replica, 's2')).length === 2))
        // The write that did not reach the replica before the failover.
        await replica.client.command('ZREM', '{s2}:urls', '/lagging.html')

        const promoted = await sentinel.failover()
        assert.equal(promoted, replica)
        invl.storeUrl('/lagging.html').catch(() => {})
        assert.ok(await eventually(invl, async () => (await tracked(promoted, 's2')).includes('/lagging.html')),
          'served again after the failover, it is tracked again')
        assert.deepEqual(await tracked(promoted, 's2'), ['/lagging.html', '/replicated.html'])
      } finally {
        await invl.disconnect().catch(() => {})
        await sentinel.stop()
      }
    })

  test('over TLS: the Sentinel and the master it names are checked against the authority given, through a failover', async () => {
    const sentinel = await startRedisSentinel({ tls: true })
    const { ca } = tlsCertificates()
    const invl = createTracker({
      cf: { dist: 'E1', endpoint: moto.endpoint },
      redis: { sentinel: { name: sentinel.name, nodes: [sentinel.tlsUrl] }, tls: { ca }, prefix: 's4' },
      logger: false
    })
    try {
      await invl.storeUrl('/secure.html')
      assert.deepEqual(await tracked(await sentinel.master(), 's4'), ['/secure.html'])
      // Asked not to check the certificates: neither the Sentinel's nor the master's is.
      const unverified = createTracker({
        cf: { dist: 'E1', endpoint: moto.endpoint },
        redis: { sentinel: { name: sentinel.name, nodes: [sentinel.tlsUrl] }, tls: { rejectUnauthorized: false }, prefix: 's4i' },
        logger: false
      })
      try {
        await unverified.storeUrl('/unverified.html')
      } finally {
        await unverified.disconnect()
      }
      assert.deepEqual(await tracked(await sentinel.master(), 's4i'), ['/unverified.html'])
      const promoted = await sentinel.failover()
      invl.storeUrl('/after.html').catch(() => {})
      assert.ok(await eventually(invl, async () => (await tracked(promoted, 's4')).includes('/after.html')))
    } finally {
      await invl.disconnect().catch(() => {})
      await sentinel.stop()
    }
    // Sentinels reached over TLS: so is the master (its password travels to it).
    const { native } = parseOptions({ cf: { dist: 'E1' }, redis: { sentinel: { name: 'm', nodes: ['rediss://s:26379'] }, password: 'p' } })
    assert.equal(native.redisUrl.split('//')[0], 'rediss:')
  })

  test('passwords: redis.password is the master\'s, a Sentinel\'s own goes in its URL; a wrong one is refused without being shown',
    async () => {
      const sentinel = await startRedisSentinel({ password: 'master s3cret', sentinelPassword: 'sentinel s3cret' })
      const make = (password, sentinelPassword) => createTracker({
        cf: { dist: 'E1', endpoint: moto.endpoint },
        redis: {
          sentinel: { name: sentinel.name, nodes: [sentinel.url.replace('//', `//:${encodeURIComponent(sentinelPassword)}@`)] },
          password,
          prefix: 's5'
        },
        logger: false
      })
      try {
        const invl = make('master s3cret', 'sentinel s3cret')
        try {
          await invl.storeUrl('/locked.html')
          assert.deepEqual(await tracked(await sentinel.master(), 's5'), ['/locked.html'])
        } finally {
          await invl.disconnect()
        }
        await failsInRedis(make('not it', 'sentinel s3cret'), { hides: 'not it' })
        await failsInRedis(make('master s3cret', 'not it'), { hides: 'not it' })
      } finally {
        await sentinel.stop()
      }
    })

  test('no Sentinel answers: the call fails with the reason, nothing is unhandled, and the next call asks again', async () => {
    const invl = createTracker({
      cf: { dist: 'E1', endpoint: moto.endpoint },
      redis: { sentinel: { name: 'tracked', nodes: [`redis://127.0.0.1:${await freePort()}`] } },
      logger: false
    })
    await failsInRedis(invl, { matches: /sentinel|refused|connect/i, times: 2, call: (t) => t.listUrls() })
  })

  test('bad Sentinel options are refused when the tracker is made', () => {
    const nodes = ['redis://127.0.0.1:26379']
    const refusals = [
      [{ sentinel: 'tracked' }, 'ERR_INVALID_ARG_TYPE', /options\.redis\.sentinel/],
      [{ sentinel: { nodes } }, 'ERR_INVALID_ARG_TYPE', /options\.redis\.sentinel\.name/],
      [{ sentinel: { name: 'tracked' } }, 'ERR_INVALID_ARG_TYPE', /options\.redis\.sentinel\.nodes/],
      [{ sentinel: { name: 'tracked', nodes: ['http://x:1'] } }, 'ERR_INVALID_ARG_VALUE', /sentinel\.nodes\[0\]/],
      [{ sentinel: { name: 'tracked', nodes, db: -1 } }, 'ERR_INVALID_ARG_TYPE', /sentinel\.db/],
      [{ sentinel: { name: 'tracked', nodes: ['redis://127.0.0.1:26379/3'] } }, 'ERR_INVALID_ARG_VALUE', /names a database: give the master's as sentinel\.db/],
      [{ sentinel: { name: 'tracked', nodes }, url: 'redis://127.0.0.1:6379' }, 'ERR_INVALID_ARG_VALUE', /names the master/],
      [{ sentinel: { name: 'tracked', nodes }, cluster: true }, 'ERR_INVALID_ARG_VALUE', /not a cluster/]
    ]
    for (const [redis, code, message] of refusals) {
      assert.throws(() => createTracker({ cf: { dist: 'E1' }, redis, logger: false }), (err) => {
        assert.equal(err.code, code, `${JSON.stringify(redis)}: ${err.message}`)
        assert.match(err.message, message)
        return true
      })
    }
  })

  test('the command line: --redis-sentinel or REDIS_SENTINEL, with the Sentinels as the Redis URL', async () => {
    const sentinel = await startRedisSentinel()
    try {
      const down = `redis://127.0.0.1:${await freePort()}`
      const env = { ...awsTestEnv, REDIS_URL: `${down},${sentinel.url}`, CF_DIST: 'E1' }
      const track = await runNode(BIN, ['track', '/cli.html', '--redis-sentinel', sentinel.name, '--prefix', 's3'], { env })
      assert.equal(track.code, 0, track.stderr)
      const list = await runNode(BIN, ['list', '--prefix', 's3'], { env: { ...env, REDIS_SENTINEL: sentinel.name } })
      assert.equal(list.code, 0, list.stderr)
      assert.equal(list.stdout, '/cli.html\n')
      assert.deepEqual(await tracked(await sentinel.master(), 's3'), ['/cli.html'])

      // A /<db> on the Sentinel URLs is the master's database.
      const inDb3 = await runNode(BIN, ['track', '/db3.html', '--redis-sentinel', sentinel.name, '--prefix', 's3'],
        { env: { ...env, REDIS_URL: `${sentinel.url}/3` } })
      assert.equal(inDb3.code, 0, inDb3.stderr)
      const master = await sentinel.master()
      assert.equal(await master.client.command('SELECT', 3), 'OK')
      assert.deepEqual(await tracked(master, 's3'), ['/db3.html'])
    } finally {
      await sentinel.stop()
    }
  })
})
