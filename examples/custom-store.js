'use strict'

// A custom store written for the original package: it extends Store and implements set, getAllKeys(callback) and
// clearAll, plus the optional del and setTTL, over a Map. Stores like this keep working unchanged: the tracker
// calls them the way the original did (a callback parameter means a callback; a return value or Promise also works).
// `node examples/custom-store.js` tracks a few URLs into it and shows the invalidation it would send.
//
// In your app, require('cf-invalidation-tracker') where this file requires '..'.

const createTracker = require('..')
const { Store } = createTracker

/** Tracked URLs in a Map: key -> expiry time in ms (0: never). */
class MapStore extends Store {
  constructor () {
    super()
    this.map = new Map()
  }

  set (key, value) {
    if (!this.map.has(key)) this.map.set(key, 0)
  }

  getAllKeys (callback) {
    const now = Date.now()
    for (const [key, expires] of this.map) if (expires !== 0 && expires <= now) this.map.delete(key)
    process.nextTick(callback, null, [...this.map.keys()])
  }

  clearAll () {
    this.map.clear()
  }

  del (key) {
    this.map.delete(key)
  }

  setTTL (key, ttlInSec) {
    if (this.map.has(key)) this.map.set(key, ttlInSec > 0 ? Date.now() + ttlInSec * 1000 : 0)
  }
}

module.exports = MapStore

if (require.main === module) {
  const store = new MapStore()
  const invl = createTracker({ cf: { dist: process.env.CF_DIST || 'EXAMPLE' }, store, logger: false })

  ;(async () => {
    await invl.storeUrl('/index.html')
    await invl.storeUrl('/news/today', 60 * 60) // stops being tracked in an hour
    await invl.storeUrl('/photos/été 2024.jpg')
    await invl.storeUrl('/gone')
    await invl.removeUrl('/gone')
    console.log('In the store:', [...store.map.keys()].join(', '))
    console.log('Tracked:', (await invl.listUrls()).join(', '))
    const report = await invl.sendInvalidation({ dryRun: true })
    console.log(`A send would invalidate ${report.paths} paths:`, report.batches.flatMap((b) => b.paths).join(', '))
  })().catch((err) => {
    console.error(err.message)
    process.exitCode = 1
  })
}
