'use strict'

// Custom stores: the original contract, the Store base class, and every way a store can fail.

const { describe, it, before, after } = require('node:test')
const assert = require('node:assert/strict')
const createTracker = require('..')
const { Store } = createTracker
const { startEnv, sleep, noUnhandledRejections } = require('./helpers/env')
const { SyncStore, PromiseStore, CallbackStore } = require('./helpers/stores')
const { startFakeCloudFront } = require('./helpers/fake-cloudfront')

require('node:v8').setFlagsFromString('--expose-gc')
/** A full garbage collection, now. */
const collectGarbage = require('node:vm').runInNewContext('gc')

let env
before(async () => { env = await startEnv() })
after(async () => { await env.close() })

describe('the Store base class', () => {
  it('throws the original messages for unimplemented required methods', () => {
    const s = new Store()
    assert.throws(() => s.set('/a', 1), { message: "Missing 'set' implementation!" })
    assert.throws(() => s.getAllKeys(() => {}), { message: "Missing 'getAllKeys' implementation!" })
    assert.throws(() => s.clearAll(), { message: "Missing 'clearAll' implementation!" })
  })

  it('refuses a store missing required methods, naming them', () => {
    class Half extends Store { set () {} }
    const cf = { dist: 'E1' }
    assert.throws(() => createTracker({ cf, store: new Half() }), (err) => {
      assert.equal(err.code, 'ERR_INVALID_ARG_TYPE')
      assert.ok(err instanceof TypeError)
      assert.match(err.message, /'getAllKeys'/)
      assert.match(err.message, /'clearAll'/)
      assert.doesNotMatch(err.message, /'set'/)
      return true
    })
    assert.throws(() => createTracker({ cf, store: { set () {}, getAllKeys () {} } }), /'clearAll'/)
  })

  it('accepts duck-typed stores, subclasses and old-style prototype stores', () => {
    const cf = { dist: 'E1' }
    for (const store of [new SyncStore(), new PromiseStore(), new CallbackStore(), { set () {}, getAllKeys () { return [] }, clearAll () {} }]) {
      assert.ok(createTracker({ cf, store }))
    }
  })
})

describe('a store written for the original package', () => {
  it('is driven with this bound, connected first, and forgets exactly what was sent', async () => {
    const calls = []
    function RedisLikeStore () { this.keys = new Map(); this.connected = false }
    RedisLikeStore.prototype.__proto__ = Store.prototype // eslint-disable-line no-proto
    RedisLikeStore.prototype.isConnected = function () { return this.connected }
    RedisLikeStore.prototype.connect = function () { calls.push('connect'); this.connected = true }
    RedisLikeStore.prototype.disconnect = function () { calls.push('disconnect'); this.connected = false }
    RedisLikeStore.prototype.set = function (key, value) { assert.equal(value, 1); this.keys.set(key, value) }
    RedisLikeStore.prototype.getAllKeys = function (cb) { cb(null, [...this.keys.keys()]) }
    RedisLikeStore.prototype.clearAll = function () { calls.push('clearAll'); this.keys.clear() }
    RedisLikeStore.prototype.del = function (key) { calls.push(`del ${key}`); this.keys.delete(key) }
    const store = new RedisLikeStore()
    const dist = await env.newDistribution()
    const invl = env.tracker({ cf: { dist }, store })
    await invl.storeUrl('/a')
    await invl.storeUrl('/b')
    assert.equal(calls[0], 'connect')
    const report = await invl.sendInvalidation()
    assert.equal(report.paths, 2)
    assert.deepEqual(await env.received(dist), ['/a', '/b'])
    assert.ok(calls.includes('del /a') && calls.includes('del /b'))
    assert.ok(!calls.includes('clearAll'), 'a store with del is never cleared wholesale')
    assert.equal(calls.at(-1), 'disconnect')
    assert.equal(store.keys.size, 0)
  })

  it('an async method that also takes a callback answers through whichever answers: async getAllKeys (cb)', async () => {
    const keys = new Set()
    const store = {
      async isConnected (cb) { await null; cb(null, true) },
      connect () { throw new Error('connected already') },
      async set (k, v, cb) { await null; keys.add(k); cb() },
      async getAllKeys (cb) { await null; cb(null, [...keys]) }, // its promise answers nothing
      async del (k) { keys.delete(k) }, // a promise, no callback
      clearAll (cb) { keys.clear(); cb() }
    }
    const dist = await env.newDistribution()
    const invl = env.tracker({ cf: { dist }, store })
    await invl.storeUrl('/a')
    assert.deepEqual(await invl.listUrls(), ['/a'])
    const report = await invl.sendInvalidation()
    assert.equal(report.paths, 1)
    assert.deepEqual(await env.received(dist), ['/a'])
    assert.deepEqual([...keys], [])
  })

  it('URLs stored while a send runs survive it', async () => {
    const store = new PromiseStore()
    const original = store.getAllKeys.bind(store)
    let invl
    store.getAllKeys = async function () {
      const keys = await original()
      // A request arrives while the send is under way.
      await invl.storeUrl('/during')
      return keys
    }
    const dist = await env.newDistribution()
    invl = env.tracker({ cf: { dist }, store })
    await invl.storeUrl('/before')
    await invl.sendInvalidation()
    assert.deepEqual(await env.received(dist), ['/before'])
    assert.deepEqual(await invl.listUrls(), ['/during'])
  })

  it('a store without del falls back to clearAll after a complete send', async () => {
    const keys = new Set()
    let cleared = 0
    const store = { set (k) { keys.add(k) }, getAllKeys () { return [...keys] }, clearAll () { cleared++; keys.clear() } }
    const dist = await env.newDistribution()
    const invl = env.tracker({ cf: { dist }, store })
    await invl.storeUrl('/x')
    await invl.sendInvalidation()
    assert.equal(cleared, 1)
    assert.deepEqual(await env.received(dist), ['/x'])
  })
})

describe('custom stores and the send protocol', () => {
  it('without del, a partial failure bills nothing twice', async () => {
    const cf = await startFakeCloudFront({ distributions: ['EJS'] })
    try {
      const keys = new Set()
      const store = { set (k) { keys.add(k) }, getAllKeys () { return [...keys] }, clearAll () { keys.clear() } }
      const invl = createTracker({ cf: { dist: 'EJS', endpoint: cf.endpoint }, store, batchSize: 2, logger: false })
      for (const u of ['/a', '/b', '/c', '/d']) await invl.storeUrl(u)
      cf.fail('accessDenied', { after: 1 }) // the first batch is accepted, the second refused
      await assert.rejects(invl.sendInvalidation(), { code: 'ERR_CFIT_CLOUDFRONT' })
      assert.equal(keys.size, 4, 'nothing is cleared before every batch went through')
      const report = await invl.sendInvalidation()
      assert.equal(report.resumed, 1)
      assert.deepEqual([...cf.pathsReceived('EJS')].sort(), ['/a', '/b', '/c', '/d'])
      assert.equal(keys.size, 0)
    } finally {
      await cf.stop()
    }
  })

  it('legacy keys holding raw URLs are sent normalised and deleted under their own name', async () => {
    const store = new SyncStore()
    store.data.set('/a b') // written by the original package: a raw URL
    store.data.set('/c%20d')
    store.data.set('/*') // requested by anyone: a URL, never a wildcard
    store.data.set('/img/*')
    const dist = await env.newDistribution()
    const invl = env.tracker({ cf: { dist }, store })
    await invl.sendInvalidation()
    assert.deepEqual(await env.received(dist), ['/%2A', '/a%20b', '/c%20d', '/img/%2A'])
    assert.deepEqual(store.data.live(), [])
    await invl.sendInvalidation()
    assert.equal((await env.invalidations(dist)).length, 1, 'nothing left to send again')
  })

  it('an explicit wildcard kept in a custom store is sent as a wildcard', async () => {
    const store = new PromiseStore()
    const dist = await env.newDistribution()
    const invl = env.tracker({ cf: { dist }, store })
    await invl.storeUrl('/img/', { wildcard: true })
    await invl.storeUrl('/x*y')
    // Its key is marked as the tracker's wildcard (no request target holds a space).
    assert.deepEqual([...store.data.live()].sort(), ['/x%2Ay', 'wildcard /img/*'])
    const other = env.tracker({ cf: { dist }, store }) // another process reading the same store
    assert.deepEqual(await other.listUrls(), ['/img/*', '/x%2Ay'])
    await other.sendInvalidation()
    assert.deepEqual(await env.received(dist), ['/img/*', '/x%2Ay'])
    assert.deepEqual(store.data.live(), [], 'deleted under its key')
  })

  it('with del, a URL stored again while its del is on the way stays tracked', async () => {
    const store = new SyncStore()
    const del = store.del.bind(store)
    let deleting
    store.del = async (key) => { deleting?.(); await sleep(150); return del(key) }
    const dist = await env.newDistribution()
    const invl = env.tracker({ cf: { dist }, store })
    await invl.storeUrl('/a')
    const sending = invl.sendInvalidation()
    await new Promise((resolve) => { deleting = resolve }) // CloudFront took it; its del is on the way
    await invl.storeUrl('/a') // served again
    await sending
    assert.deepEqual(await env.received(dist), ['/a'])
    assert.deepEqual(store.data.live(), ['/a'], 'still in the store')
    assert.deepEqual(await invl.listUrls(), ['/a'])
  })

  const withDel = () => { const store = new PromiseStore(); return { store, held: () => store.data.live() } }
  const withoutDel = () => {
    const keys = new Set()
    return { store: { set (k) { keys.add(k) }, getAllKeys () { return [...keys] }, clearAll () { keys.clear() } }, held: () => [...keys].sort() }
  }
  for (const [name, make] of [['with del', withDel], ['without del (clearAll)', withoutDel]]) {
    it(`${name}: URLs stored during the send, or again while their batch was on its way, stay tracked`, async () => {
      const cf = await startFakeCloudFront({ distributions: ['EJS'] })
      try {
        const { store, held } = make()
        const invl = createTracker({ cf: { dist: 'EJS', endpoint: cf.endpoint }, store, logger: false })
        await invl.storeUrl('/a')
        await invl.storeUrl('/b')
        cf.fail('slow', { delayMs: 400 })
        const sending = invl.sendInvalidation()
        await sleep(150) // claimed, on its way to CloudFront
        await invl.storeUrl('/during')
        await invl.storeUrl('/a') // served again: CloudFront may cache it before the invalidation lands
        await sending
        assert.deepEqual([...cf.pathsReceived('EJS')].sort(), ['/a', '/b'])
        assert.deepEqual(held(), ['/a', '/during'])
        assert.deepEqual(await invl.listUrls(), ['/a', '/during'])
        await invl.sendInvalidation()
        assert.deepEqual([...cf.pathsReceived('EJS')].sort(), ['/a', '/a', '/b', '/during'])
        assert.deepEqual(held(), [])
      } finally {
        await cf.stop()
      }
    })
  }

  it('without del, a URL served again while CloudFront refused its send is sent once, and then forgotten', async () => {
    const cf = await startFakeCloudFront({ distributions: ['EJS'] })
    try {
      const { store, held } = withoutDel()
      const invl = createTracker({ cf: { dist: 'EJS', endpoint: cf.endpoint }, store, logger: false })
      await invl.storeUrl('/a')
      cf.fail('accessDenied')
      await assert.rejects(invl.sendInvalidation(), { code: 'ERR_CFIT_CLOUDFRONT' })
      await invl.storeUrl('/a') // served again; CloudFront never made the first try
      await invl.storeUrl('/b')
      await invl.sendInvalidation()
      assert.deepEqual([...cf.pathsReceived('EJS')].sort(), ['/a', '/b'])
      assert.deepEqual(held(), [])
      assert.deepEqual(await invl.listUrls(), [])
    } finally {
      await cf.stop()
    }
  })

  /** Runs `fn(cf, received)` against a fault-injecting CloudFront serving distribution EJS, stopped after. */
  async function withCloudFront (fn) {
    const cf = await startFakeCloudFront({ distributions: ['EJS'] })
    try {
      await fn(cf, () => [...cf.pathsReceived('EJS')].sort())
    } finally {
      await cf.stop()
    }
  }

  /** A store without `del` over `keys`, with `getAllKeys` and `clearAll` as given. */
  const withoutDelOver = (keys, methods) => ({ set (k) { keys.add(k) }, getAllKeys () { return [...keys] }, clearAll () { keys.clear() }, ...methods })

  it('without del, reading the store failing once every batch went through bills nothing again; the next send clears it', async () => {
    await withCloudFront(async (cf, received) => {
      const keys = new Set()
      let failReads = 0
      const store = withoutDelOver(keys, {
        getAllKeys () { if (failReads > 0 && --failReads === 0) throw new Error('store blip'); return [...keys] }
      })
      const invl = createTracker({ cf: { dist: 'EJS', endpoint: cf.endpoint }, store, logger: false })
      await invl.storeUrl('/a')
      await invl.storeUrl('/b')
      failReads = 2 // the claim reads the keys; the read before clearAll fails
      await assert.rejects(invl.sendInvalidation(), { code: 'ERR_CFIT_STORE' })
      assert.deepEqual(received(), ['/a', '/b'])
      await invl.storeUrl('/c')
      const report = await invl.sendInvalidation()
      assert.deepEqual(received(), ['/a', '/b', '/c'], 'nothing sent twice')
      assert.equal(report.paths, 1)
      assert.deepEqual([...keys], [])
    })
  })

  it('without del, a clearAll that times out (and clears later) loses none of the URLs the send did not take', async () => {
    await withCloudFront(async (cf, received) => {
      const keys = new Set()
      let slowClear = true
      const store = withoutDelOver(keys, { async clearAll () { if (slowClear) await sleep(300); keys.clear() } })
      const invl = createTracker({ cf: { dist: 'EJS', endpoint: cf.endpoint }, store, storeTimeoutMs: 100, logger: false })
      await invl.storeUrl('/a')
      cf.fail('slow', { delayMs: 100 })
      const sending = invl.sendInvalidation()
      for (let i = 0; i < 200 && cf.requests.length === 0; i++) await sleep(5)
      await invl.storeUrl('/b') // stored while the send runs: not in its claim
      await assert.rejects(sending, { code: 'ERR_CFIT_STORE_TIMEOUT' })
      await sleep(400) // the slow clearAll completes
      slowClear = false
      assert.deepEqual(await invl.listUrls(), ['/b'])
      await invl.sendInvalidation()
      assert.deepEqual(received(), ['/a', '/b'], 'each sent once')
      assert.deepEqual(await invl.listUrls(), [])
    })
  })

  it('a URL served again after its resumed batch was made before is not lost when a later batch of that claim fails', async () => {
    await withCloudFront(async (cf, received) => {
      const store = new SyncStore()
      let failDel = true
      const del = store.del
      store.del = function (key) { if (failDel) throw new Error('del down'); return del.call(this, key) }
      const invl = createTracker({ cf: { dist: 'EJS', endpoint: cf.endpoint }, store, batchSize: 1, logger: false })
      await invl.storeUrl('/u')
      await invl.storeUrl('/w')
      // CloudFront makes /u's invalidation; forgetting it fails: the send stops, its claim kept with its plan.
      await assert.rejects(invl.sendInvalidation(), { code: 'ERR_CFIT_STORE' })
      assert.deepEqual(received(), ['/u'])
      await sleep(1100) // the next send begins in a later second than that invalidation was made
      failDel = false
      await invl.storeUrl('/u') // served (and cached) again after it was invalidated
      // /u's batch gets the earlier invalidation back (made before), so /u goes in the new claim; /w's is refused.
      cf.fail('accessDenied', { after: 1 })
      await assert.rejects(invl.sendInvalidation(), { code: 'ERR_CFIT_CLOUDFRONT' })
      assert.deepEqual(await invl.listUrls(), ['/u', '/w'])
      await invl.sendInvalidation()
      assert.deepEqual(received(), ['/u', '/u', '/w'], '/u, served again after its invalidation, is invalidated again')
      assert.deepEqual(await invl.listUrls(), [])
    })
  })

  it('two trackers given one store object send each URL once between them, and resume each other\'s failed send', async () => {
    const cf = await startFakeCloudFront({ distributions: ['EJS'] })
    try {
      const store = new SyncStore()
      const options = { cf: { dist: 'EJS', endpoint: cf.endpoint }, store, logger: false }
      const [a, b] = [createTracker(options), createTracker(options)]
      for (const u of ['/a', '/b']) await a.storeUrl(u)
      cf.fail('slow', { delayMs: 400 })
      const sendingA = a.sendInvalidation()
      for (let i = 0; i < 200 && cf.requests.length === 0; i++) await sleep(10) // A has claimed and is sending
      const reports = await Promise.all([sendingA, b.sendInvalidation()])
      assert.deepEqual(reports.map((r) => r.paths), [2, 0])
      assert.deepEqual([...cf.pathsReceived('EJS')].sort(), ['/a', '/b'])

      await b.storeUrl('/c')
      cf.fail('accessDenied')
      await assert.rejects(b.sendInvalidation(), { code: 'ERR_CFIT_CLOUDFRONT' })
      const report = await a.sendInvalidation()
      assert.equal(report.resumed, 1)
      assert.deepEqual([...cf.pathsReceived('EJS')].sort(), ['/a', '/b', '/c'])
      assert.deepEqual(store.data.live(), [])
    } finally {
      await cf.stop()
    }
  })

  it('removeUrl wins over a write already under way', async () => {
    const store = new SyncStore()
    const set = store.set.bind(store)
    store.set = async (key, value) => { await sleep(150); return set(key, value) }
    const invl = env.tracker({ store, flushIntervalMs: 10 })
    invl.storeUrl('/gone')
    await sleep(60) // the write has been taken from the buffer and is on its way
    await invl.removeUrl('/gone')
    assert.deepEqual(await invl.listUrls(), [])
  })
})

describe('store failures reject with the method named and leave the process alive', () => {
  const cases = {
    'set throws': { set () { throw new Error('disk full') } },
    'set rejects': { async set () { throw new Error('disk full') } },
    'set rejects with nothing': { set () { return Promise.reject() } }, // eslint-disable-line prefer-promise-reject-errors
    'set throws a string': { set () { throw 'disk full' } }, // eslint-disable-line no-throw-literal
    // connect() and isConnected() run before the method asked for, which the native side names.
    'connect throws': { isConnected () { return false }, connect () { throw new Error('refused') } },
    'connect rejects': { isConnected () { return false }, async connect () { throw new Error('refused') } },
    'isConnected throws': { isConnected () { throw new Error('no socket') }, connect () {} },
    'getAllKeys throws': { getAllKeys () { throw new Error('boom') } },
    'getAllKeys rejects': { async getAllKeys () { throw new Error('boom') } },
    'getAllKeys calls back an error': { getAllKeys (cb) { setImmediate(() => cb(new Error('boom'))) } },
    'getAllKeys answers a number': { getAllKeys () { return 42 } },
    'getAllKeys answers non-strings': { getAllKeys () { return ['/a', 7] } },
    'getAllKeys answers an object': { async getAllKeys () { return { '/a': 1 } } },
    'getAllKeys answers nothing': { getAllKeys () {} },
    'getAllKeys answers a sparse array longer than memory': { getAllKeys () { const a = ['/a']; a.length = 2 ** 32 - 1; return a } },
    'getAllKeys answers an array whose getter throws': {
      getAllKeys () { const a = ['/a', '/b']; Object.defineProperty(a, 1, { get () { throw new Error('getter') } }); return a }
    },
    // Keeps the callback (a request still waiting on its socket, say): answered by the timeout.
    'getAllKeys never answers': { getAllKeys (cb) { this.waiting.push(cb) }, waiting: [] },
    // Drops the callback: once it is garbage collected nothing can answer, and the caller learns so at once.
    'getAllKeys drops its callback': { getAllKeys (cb) { setImmediate(collectGarbage) } } // eslint-disable-line n/handle-callback-err
  }
  const expectations = {
    'set throws': ['set', 'ERR_CFIT_STORE', /disk full/],
    'set rejects': ['set', 'ERR_CFIT_STORE', /disk full/],
    'set rejects with nothing': ['set', 'ERR_CFIT_STORE', /threw or rejected with type undefined/],
    'set throws a string': ['set', 'ERR_CFIT_STORE', /threw or rejected with type string \("disk full"\)/],
    'connect throws': ['connect', 'ERR_CFIT_STORE', /refused/],
    'connect rejects': ['connect', 'ERR_CFIT_STORE', /refused/],
    'isConnected throws': ['isConnected', 'ERR_CFIT_STORE', /no socket/],
    'getAllKeys throws': ['getAllKeys', 'ERR_CFIT_STORE', /boom/],
    'getAllKeys rejects': ['getAllKeys', 'ERR_CFIT_STORE', /boom/],
    'getAllKeys calls back an error': ['getAllKeys', 'ERR_CFIT_STORE', /boom/],
    'getAllKeys answers a number': ['getAllKeys', 'ERR_CFIT_STORE', /array of strings/],
    'getAllKeys answers non-strings': ['getAllKeys', 'ERR_CFIT_STORE', /array of strings/],
    'getAllKeys answers an object': ['getAllKeys', 'ERR_CFIT_STORE', /array of strings/],
    'getAllKeys answers nothing': ['getAllKeys', 'ERR_CFIT_STORE', /array of strings/],
    'getAllKeys answers a sparse array longer than memory': ['getAllKeys', 'ERR_CFIT_STORE', /array of strings/],
    'getAllKeys answers an array whose getter throws': ['getAllKeys', 'ERR_CFIT_STORE', /array of strings/],
    'getAllKeys never answers': ['getAllKeys', 'ERR_CFIT_STORE_TIMEOUT', /did not answer within 200 ms/],
    'getAllKeys drops its callback': ['getAllKeys', 'ERR_CFIT_STORE', /will never answer: the callback it was given .* was dropped/]
  }
  for (const [name, override] of Object.entries(cases)) {
    it(name, async () => {
      const good = new SyncStore()
      const store = Object.assign(good, override)
      const dist = await env.newDistribution()
      const invl = env.tracker({ cf: { dist }, store, storeTimeoutMs: 200 })
      const [method, code, detail] = expectations[name]
      await noUnhandledRejections(async () => {
        if (method === 'set' || method === 'connect' || method === 'isConnected') {
          invl.storeUrl('/unawaited') // the original's usage: nobody awaits
          await assert.rejects(invl.storeUrl('/a'), (err) => {
            assert.equal(err.code, code)
            assert.match(err.message, new RegExp(`'${method}'`))
            assert.match(err.message, detail)
            return true
          })
        } else {
          good.data.set('/a')
          invl.sendInvalidation() // unawaited
          await assert.rejects(invl.sendInvalidation(), (err) => {
            assert.equal(err.code, code, err.message)
            assert.match(err.message, new RegExp(`'${method}'`))
            assert.match(err.message, detail)
            return true
          })
          // Nothing it could not read was sent; nothing was removed.
          assert.deepEqual(await env.invalidations(dist), [])
          assert.deepEqual(good.data.live(), ['/a'])
        }
      })
    })
  }

  it('a del that fails after CloudFront accepted keeps the URL for the next send (sent again, never lost), and the report names the invalidation', async () => {
    const store = new SyncStore()
    let failDel = true
    store.del = function (key) { if (failDel) throw new Error('del down'); this.data.del(key) }
    const dist = await env.newDistribution()
    const invl = env.tracker({ cf: { dist }, store })
    await invl.storeUrl('/a')
    const err = await invl.sendInvalidation().then(() => assert.fail('resolved'), (e) => e)
    assert.equal(err.code, 'ERR_CFIT_STORE')
    assert.match(err.message, /'del'/)
    const [made] = await env.invalidations(dist)
    assert.deepEqual(err.report.batches.map((b) => [b.id, b.status, b.paths]), [[made.id, 'InProgress', ['/a']]])
    assert.equal(err.report.paths, 1)
    assert.deepEqual(store.data.live(), ['/a'])
    failDel = false
    const report = await invl.sendInvalidation()
    assert.equal(report.resumed, 1, 'the accepted batch is resumed with its CallerReference')
    const invalidations = await env.invalidations(dist)
    assert.equal(new Set(invalidations.map((i) => i.callerReference)).size, 1)
    assert.deepEqual(store.data.live(), [])
  })

  it('a store that is slow but answers in time is fine', async () => {
    const store = new SyncStore()
    const orig = store.getAllKeys.bind(store)
    store.getAllKeys = async () => { await sleep(100); return orig() }
    const invl = env.tracker({ store, storeTimeoutMs: 1000 })
    await invl.storeUrl('/slow')
    assert.deepEqual(await invl.listUrls(), ['/slow'])
  })
})
