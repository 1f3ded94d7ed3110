'use strict'

// The Redis store on a real Redis Cluster: three redis-servers on loopback ports, each serving a third of the slots;
// moto as CloudFront. (The store conformance suite runs on this cluster too.)

const { test, describe, before, after } = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')

const createTracker = require('..')
const { startRedisCluster, startMoto, useAwsTestEnv, awsTestEnv, freePort, tlsCertificates } = require('./helpers/services')
const { failsInRedis, eventually, sleep } = require('./helpers/env')
const { runNode } = require('./helpers/run')

const BIN = path.join(__dirname, '..', 'bin', 'cf-invalidation-tracker.js')

describe('Redis Cluster', () => {
  let cluster
  let moto
  let restoreEnv
  before(async () => {
    restoreEnv = useAwsTestEnv()
    ;[cluster, moto] = await Promise.all([startRedisCluster(), startMoto()])
  })
  after(async () => {
    await Promise.allSettled([cluster?.stop(), moto?.stop()])
    restoreEnv?.()
  })

  const tracker = (dist, redis) => createTracker({ cf: { dist, endpoint: moto.endpoint }, redis, logger: false })
  async function received (dist) {
    return (await moto.allInvalidatedPaths(dist)).flatMap((i) => i.paths).sort()
  }

  test('given a node that does not serve its keys: without redis.cluster the write fails saying so; with it, URLs reach the node that serves them and a send invalidates them',
    async () => {
      const { id: dist } = await moto.createDistribution({ originDomain: 'origin.example.com' })
      const other = await cluster.nodeNotFor('{c1}:urls')
      const serving = await cluster.nodeFor('{c1}:urls')

      await failsInRedis(tracker(dist, { url: other.url, prefix: 'c1' }), { matches: /Moved.*set redis\.cluster/ })

      const invl = tracker(dist, { url: other.url, cluster: true, prefix: 'c1' })
      try {
        await Promise.all(['/a.html', '/b.css', '/c.js'].map((u) => invl.storeUrl(u)))
        await invl.storeUrl('/short.html', 60)
        assert.deepEqual((await serving.client.command('ZRANGE', '{c1}:urls', 0, -1)).sort(), ['/a.html', '/b.css', '/c.js', '/short.html'])
        const report = await invl.sendInvalidation()
        assert.equal(report.paths, 4)
        assert.deepEqual(await received(dist), ['/a.html', '/b.css', '/c.js', '/short.html'])
        assert.deepEqual(await invl.listUrls(), [])
        assert.equal(report.billedThisMonth, 4)
        assert.equal(await serving.client.command('GET', `{c1}:billed:${new Date().toISOString().slice(0, 7)}`), '4')
      } finally {
        await invl.disconnect()
      }
    })

  test('nodes to learn the cluster from: one that is down is passed over for the next', async () => {
    const down = `redis://127.0.0.1:${await freePort()}`
    const invl = tracker('E1', { cluster: [down, cluster.urls[1]], prefix: 'c2' })
    try {
      await invl.storeUrl('/learned.html')
      assert.deepEqual(await cluster.tracked('c2'), ['/learned.html'])
    } finally {
      await invl.disconnect()
    }
  })

  test('a password for every node: redis.password goes to each URL without credentials of its own', async () => {
    const locked = await startRedisCluster({ password: 'cluster s3cret' })
    try {
      const forms = [
        { cluster: locked.urls, password: 'cluster s3cret', prefix: 'c6' },
        { hostname: '127.0.0.1', port: locked.nodes[2].port, cluster: [locked.urls[0]], password: 'cluster s3cret', prefix: 'c6' },
        { url: locked.urls[1], cluster: true, password: 'cluster s3cret', prefix: 'c6' }
      ]
      for (const [i, form] of forms.entries()) {
        const invl = tracker('E1', form)
        try {
          await invl.storeUrl(`/locked-${i}.html`)
        } finally {
          await invl.disconnect()
        }
      }
      assert.deepEqual(await locked.tracked('c6'), ['/locked-0.html', '/locked-1.html', '/locked-2.html'])

      await failsInRedis(tracker('E1', { cluster: locked.urls, password: 'not it', prefix: 'c6' }), { hides: 'not it' })
    } finally {
      await locked.stop()
    }
  })

  test('no node answers: the write fails with the reason, nothing is unhandled, and the next call tries again', async () => {
    const down = `redis://127.0.0.1:${await freePort()}`
    await failsInRedis(tracker('E1', { url: down, cluster: true }), { matches: /connect|refused|nodes/i, times: 2, call: (t) => t.listUrls() })
  })

  test('the node serving the keys crashes and comes back: URLs served meanwhile are written once it is back', async () => {
    const invl = tracker('E1', { cluster: cluster.urls, prefix: 'c3' })
    const serving = await cluster.nodeFor('{c3}:urls')
    try {
      await invl.storeUrl('/before.html')
      await serving.kill()
      const during = invl.storeUrl('/during.html')
      during.catch(() => {}) // the writer retries it; its window may fail first
      await sleep(1000)
      await serving.restart() // the same port and cluster identity, and empty: it persists nothing
      assert.ok(await eventually(invl, async () => (await cluster.tracked('c3')).includes('/during.html')))
      assert.deepEqual(await cluster.tracked('c3'), ['/during.html'])
    } finally {
      await invl.disconnect()
    }
  })

  test('the master serving the keys crashes and its replica takes over lacking a write: the URL served again is written there',
    async () => {
      const own = await startRedisCluster()
      const invl = tracker('E1', { cluster: own.urls, prefix: 'c8' })
      try {
        const master = await own.nodeFor('{c8}:urls')
        const replica = await own.addReplica(master)
        const onReplica = async () => {
          await replica.client.command('READONLY')
          return replica.client.command('ZRANGE', '{c8}:urls', 0, -1)
        }
        await Promise.all([invl.storeUrl('/lagging.html'), invl.storeUrl('/replicated.html')])
        assert.ok(await eventually(invl, async () => (await onReplica()).length === 2))

        await master.kill()
        await replica.client.command('CLUSTER', 'FAILOVER', 'TAKEOVER')
        assert.ok(await eventually(invl, async () => /role:master/.test(await replica.client.command('INFO', 'replication'))))
        // The write that did not reach the replica before its master crashed (replication lag).
        await replica.client.command('ZREM', '{c8}:urls', '/lagging.html')

        invl.storeUrl('/lagging.html').catch(() => {}) // the crashed master may fail it first: the writer retries
        assert.ok(await eventually(invl, async () => (await onReplica()).includes('/lagging.html')),
          'served again after the failover, it is tracked again')
        assert.deepEqual(await onReplica(), ['/lagging.html', '/replicated.html'])
      } finally {
        await invl.disconnect().catch(() => {})
        await own.stop()
      }
    })

  test('a cluster over TLS: every node is checked against the authority given, and URLs reach the node that serves them',
    async () => {
      const secure = await startRedisCluster({ tls: true })
      const certs = tlsCertificates()
      try {
        const invl = tracker('E1', { url: secure.tlsUrls[0], cluster: true, tls: { ca: certs.ca }, prefix: 'c5' })
        try {
          await invl.storeUrl('/secure.html')
          assert.deepEqual(await secure.tracked('c5'), ['/secure.html'])
        } finally {
          await invl.disconnect()
        }
        await failsInRedis(tracker('E1', { cluster: secure.tlsUrls, tls: { ca: certs.otherCa }, prefix: 'c5' }), { matches: /UnknownIssuer/ })
        // Asked not to check the certificates: a node that does not serve the prefix is the seed, and the one that
        // does, learnt from it, is reached too.
        const seed = await secure.nodeNotFor('{c5}:urls')
        const unverified = tracker('E1', { url: seed.tlsUrl, cluster: true, tls: { ca: certs.otherCa, rejectUnauthorized: false }, prefix: 'c5' })
        try {
          const urls = Array.from({ length: 40 }, (_, i) => `/unverified-${i}.html`)
          await Promise.all(urls.map((u) => unverified.storeUrl(u)))
          assert.deepEqual((await secure.tracked('c5')).sort(), ['/secure.html', ...urls].sort())
        } finally {
          await unverified.disconnect()
        }
      } finally {
        await secure.stop()
      }
    })

  test('bad cluster options are refused when the tracker is made', () => {
    const refusals = [
      [{ cluster: 'yes' }, 'ERR_INVALID_ARG_TYPE', /options\.redis\.cluster/],
      [{ cluster: [] }, 'ERR_INVALID_ARG_TYPE', /options\.redis\.cluster/],
      [{ cluster: [42] }, 'ERR_INVALID_ARG_TYPE', /options\.redis\.cluster\[0\]/],
      [{ cluster: ['http://127.0.0.1:1'] }, 'ERR_INVALID_ARG_VALUE', /options\.redis\.cluster\[0\].*redis:\/\//],
      [{ url: 'redis://127.0.0.1:1/2', cluster: true }, 'ERR_INVALID_ARG_VALUE', /only database 0/],
      [{ cluster: ['redis://127.0.0.1:1', 'rediss://127.0.0.1:2'], tls: { ca: '-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n' } },
        'ERR_INVALID_ARG_VALUE', /redis\.cluster: .*trust anchors/]
    ]
    for (const [redis, code, message] of refusals) {
      assert.throws(() => tracker('E1', redis), (err) => {
        assert.equal(err.code, code, `${JSON.stringify(redis).slice(0, 80)}: ${err.message}`)
        assert.match(err.message, message)
        return true
      })
    }
  })

  test('the command line: --redis-cluster or REDIS_CLUSTER=1', async () => {
    const other = await cluster.nodeNotFor('{c4}:urls')
    const env = { ...awsTestEnv, REDIS_URL: other.url, CF_DIST: 'E1' }
    const track = await runNode(BIN, ['track', '/cli.html', '--redis-cluster', '--prefix', 'c4'], { env })
    assert.equal(track.code, 0, track.stderr)
    const list = await runNode(BIN, ['list', '--prefix', 'c4'], { env: { ...env, REDIS_CLUSTER: '1' } })
    assert.equal(list.code, 0, list.stderr)
    assert.equal(list.stdout, '/cli.html\n')
    assert.deepEqual(await cluster.tracked('c4'), ['/cli.html'])

    const plain = await runNode(BIN, ['list', '--prefix', 'c4'], { env })
    assert.equal(plain.code, 1)
    assert.match(plain.stderr, /set redis\.cluster/)
    const bad = await runNode(BIN, ['list'], { env: { ...env, REDIS_CLUSTER: 'maybe' } })
    assert.equal(bad.code, 2)
    assert.match(bad.stderr, /REDIS_CLUSTER must be 1 or 0/)
  })
})
