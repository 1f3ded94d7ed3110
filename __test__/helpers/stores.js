'use strict'

// Custom stores in every style real stores are written in, all over a Map with per-key expiry. They are what users
// pass as `store:`; the conformance suite runs the same tests against each of them and the native stores.

const { Store } = require('../..')

class MapData {
  constructor () { this.map = new Map() }
  live () {
    const now = Date.now()
    for (const [k, exp] of this.map) if (exp !== 0 && exp <= now) this.map.delete(k)
    return [...this.map.keys()]
  }
  set (key) { this.map.set(key, 0) }
  ttl (key, secs) { if (this.map.has(key)) this.map.set(key, secs > 0 ? Date.now() + secs * 1000 : 0) }
  del (key) { this.map.delete(key) }
  clear () { this.map.clear() }
}

/** Answers synchronously: plain return values. */
class SyncStore extends Store {
  constructor () { super(); this.data = new MapData() }
  set (key, value) { this.data.set(key, value) }
  getAllKeys () { return this.data.live() }
  clearAll () { this.data.clear() }
  del (key) { this.data.del(key) }
  setTTL (key, secs) { this.data.ttl(key, secs) }
}

/** Answers with Promises (an async client, e.g. a DynamoDB or Mongo wrapper). */
class PromiseStore {
  constructor () { this.data = new MapData(); this.connected = false; this.connects = 0 }
  async connect () { await tick(); this.connected = true; this.connects++ }
  async disconnect () { this.connected = false }
  isConnected () { return this.connected }
  async set (key, value) { await tick(); this.data.set(key, value) }
  async getAllKeys () { await tick(); return this.data.live() }
  async clearAll () { await tick(); this.data.clear() }
  async del (key) { await tick(); this.data.del(key) }
  async setTTL (key, secs) { await tick(); this.data.ttl(key, secs) }
}

/** The original package's style: node callbacks, declared through the prototype chain of the old days. */
function CallbackStore () {
  this.data = new MapData()
}
CallbackStore.prototype.__proto__ = Store.prototype // eslint-disable-line no-proto
CallbackStore.prototype.set = function (key, value, callback) { setImmediate(() => { this.data.set(key, value); callback(null) }) }
CallbackStore.prototype.getAllKeys = function (callback) { setImmediate(() => callback(null, this.data.live())) }
CallbackStore.prototype.clearAll = function (callback) { setImmediate(() => { this.data.clear(); callback(null) }) }
CallbackStore.prototype.del = function (key, callback) { setImmediate(() => { this.data.del(key); callback(null) }) }
CallbackStore.prototype.setTTL = function (key, secs, callback) { setImmediate(() => { this.data.ttl(key, secs); callback(null) }) }

function tick () { return new Promise((resolve) => setImmediate(resolve)) }

module.exports = { SyncStore, PromiseStore, CallbackStore, MapData }
