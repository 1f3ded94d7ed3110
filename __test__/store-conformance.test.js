'use strict'

// One behavioural suite, run against every store: the native memory store, the Redis store (on a single server, a
// Redis Cluster, the master a Redis Sentinel names, and over TLS), and custom JS stores written in the sync, promise
// and (original package's) callback styles. Each test checks what the store and CloudFront (moto)
// actually hold.

const { describe, it, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { startEnv, sleep } = require('./helpers/env')
const { startRedisCluster, startRedisSentinel, startRedis, tlsCertificates } = require('./helpers/services')
const { SyncStore, PromiseStore, CallbackStore } = require('./helpers/stores')

let env
let cluster
let sentinel
let secure
let n = 0

const kinds = {
  memory: () => ({ store: 'memory://' }),
  redis: () => ({ redis: { url: env.redis.url, prefix: `conf${++n}` } }),
  // Prefixes fall on the three nodes' slots alike; the tracker is given one node, or all of them.
  'redis cluster': () => ({ redis: n % 2 ? { url: cluster.urls[n % 3], cluster: true, prefix: `conf${++n}` } : { cluster: cluster.urls, prefix: `conf${++n}` } }),
  'redis sentinel': () => ({ redis: { sentinel: { name: sentinel.name, nodes: [sentinel.url] }, prefix: `conf${++n}` } }),
  'redis over TLS': () => ({ redis: { url: secure.tlsUrl, tls: { ca: tlsCertificates().ca }, prefix: `conf${++n}` } }),
  'js sync': () => ({ store: new SyncStore() }),
  'js promise': () => ({ store: new PromiseStore() }),
  'js callback (original style)': () => ({ store: new CallbackStore() })
}

before(async () => {
  [env, cluster, sentinel, secure] = await Promise.all([startEnv(), startRedisCluster(), startRedisSentinel(), startRedis({ tls: {} })])
})
after(async () => { await Promise.allSettled([env?.close(), cluster?.stop(), sentinel?.stop(), secure?.stop()]) })

for (const [kind, storeOptions] of Object.entries(kinds)) {
  describe(`store: ${kind}`, () => {
    async function fresh (extra = {}) {
      const dist = await env.newDistribution()
      const tracker = env.tracker({ ...storeOptions(), cf: { dist }, ...extra })
      return { tracker, dist }
    }

    it('tracks URLs once each, as normalised paths', async () => {
      const { tracker } = await fresh()
      await Promise.all(['/a', '/b', '/a', '/c d', 'e'].map((u) => tracker.storeUrl(u)))
      assert.deepEqual(await tracker.listUrls(), ['/a', '/b', '/c%20d', '/e'])
    })

    it('removeUrl stops tracking a URL', async () => {
      const { tracker } = await fresh()
      await tracker.storeUrl('/keep')
      await tracker.storeUrl('/gone')
      await tracker.removeUrl('/gone')
      assert.deepEqual(await tracker.listUrls(), ['/keep'])
    })

    it('a TTL makes a URL stop being tracked', async () => {
      const { tracker } = await fresh()
      await tracker.storeUrl('/short', 1)
      await tracker.storeUrl('/long', 60)
      await tracker.storeUrl('/forever')
      assert.deepEqual(await tracker.listUrls(), ['/forever', '/long', '/short'])
      await sleep(1300)
      assert.deepEqual(await tracker.listUrls(), ['/forever', '/long'])
    })

    it('setUrlTTL changes how long a tracked URL stays', async () => {
      const { tracker } = await fresh()
      await tracker.storeUrl('/x')
      await tracker.setUrlTTL('/x', 1)
      await sleep(1300)
      assert.deepEqual(await tracker.listUrls(), [])
    })

    it('setUrlTTL of thousands of URLs at once changes each one, and no other', async () => {
      const { tracker } = await fresh()
      const urls = Array.from({ length: 2100 }, (_, i) => `/ttl/${i}`)
      await Promise.all([...urls, '/kept'].map((u) => tracker.storeUrl(u)))
      await Promise.all(urls.map((u) => tracker.setUrlTTL(u, 1)))
      assert.equal((await tracker.listUrls()).length, 2101)
      await sleep(1300)
      assert.deepEqual(await tracker.listUrls(), ['/kept'])
    })

    it('a wildcard asked for is tracked, listed and untracked as one', async () => {
      const { tracker } = await fresh()
      await tracker.storeUrl('/css/', { wildcard: true })
      await tracker.storeUrl('/css/a.css')
      assert.deepEqual(await tracker.listUrls(), ['/css/*', '/css/a.css'])
      await tracker.removeUrl('/css/*') // a URL: its '*' is no wildcard
      assert.deepEqual(await tracker.listUrls(), ['/css/*', '/css/a.css'])
      await tracker.removeUrl('/css/', { wildcard: true })
      assert.deepEqual(await tracker.listUrls(), ['/css/a.css'])
    })

    it('an empty store sends nothing', async () => {
      const { tracker, dist } = await fresh()
      const report = await tracker.sendInvalidation()
      assert.equal(report.paths, 0)
      assert.deepEqual(report.batches, [])
      assert.deepEqual(await env.invalidations(dist), [])
    })

    it('sends exactly the tracked paths, minus removed and expired ones, then forgets them', async () => {
      const { tracker, dist } = await fresh()
      await tracker.storeUrl('/one')
      await tracker.storeUrl('/two?x=1')
      await tracker.storeUrl('/removed')
      await tracker.storeUrl('/expired', 1)
      await tracker.removeUrl('/removed')
      await sleep(1200)
      const report = await tracker.sendInvalidation()
      assert.equal(report.paths, 2)
      assert.deepEqual(await env.received(dist), ['/one', '/two?x=1'])
      assert.equal(report.batches[0].id, (await env.invalidations(dist))[0].id)
      assert.deepEqual(await tracker.listUrls(), [])
      // A second send has nothing left to send.
      const again = await tracker.sendInvalidation()
      assert.equal(again.paths, 0)
      assert.equal((await env.invalidations(dist)).length, 1)
    })

    it('splits into batches with their own CallerReference and sends each path once', async () => {
      const { tracker, dist } = await fresh({ batchSize: 1000 })
      const urls = Array.from({ length: 2000 }, (_, i) => `/page/${i}`)
      await Promise.all(urls.map((u) => tracker.storeUrl(u)))
      const report = await tracker.sendInvalidation()
      assert.equal(report.batches.length, 2, 'an exact multiple of the batch size makes no empty batch')
      const invalidations = await env.invalidations(dist)
      assert.equal(invalidations.length, 2)
      assert.equal(new Set(invalidations.map((i) => i.callerReference)).size, 2)
      assert.deepEqual(await env.received(dist), [...urls].sort())
    })

    it('keeps working after disconnect()', async () => {
      const { tracker } = await fresh()
      await tracker.storeUrl('/before')
      await tracker.disconnect()
      await tracker.storeUrl('/after')
      assert.deepEqual(await tracker.listUrls(), ['/after', '/before'])
    })

    it('a dry run reports the batches and changes nothing', async () => {
      const { tracker, dist } = await fresh()
      await tracker.storeUrl('/a')
      await tracker.storeUrl('/b')
      const report = await tracker.sendInvalidation({ dryRun: true })
      assert.equal(report.dryRun, true)
      assert.deepEqual(report.batches.map((b) => [b.status, b.paths]), [['DryRun', ['/a', '/b']]])
      assert.deepEqual(await env.invalidations(dist), [])
      assert.deepEqual(await tracker.listUrls(), ['/a', '/b'])
    })

    it('flood-guard wildcards are listed, in a dry run, and sent as listed', async () => {
      // A buffer of 5 URLs: the other 15 stored in the same run are covered by their wildcard instead.
      const { tracker, dist } = await fresh({ bufferCapacity: 5, flushIntervalMs: 30_000 })
      const urls = Array.from({ length: 20 }, (_, i) => `/img/${i}.png`)
      await Promise.all(urls.map((u) => tracker.storeUrl(u)))
      const listed = await tracker.listUrls()
      assert.equal(listed.length, 6)
      assert.ok(listed.includes('/img/*'), listed.join(' '))
      const dry = await tracker.sendInvalidation({ dryRun: true })
      assert.deepEqual(dry.overflow, ['/img/*'])
      const planned = dry.batches.flatMap((b) => b.paths).sort()
      assert.deepEqual(planned, listed)
      const report = await tracker.sendInvalidation()
      assert.deepEqual(report.overflow, ['/img/*'])
      assert.deepEqual(await env.received(dist), planned)
    })

    it('sendInvalidation({ wait: true }) reports completed batches', async () => {
      const { tracker } = await fresh({ pollIntervalMs: 50 })
      await tracker.storeUrl('/w')
      const report = await tracker.sendInvalidation({ wait: true })
      assert.equal(report.batches[0].status, 'Completed')
    })
  })
}
