'use strict'

// The store contract of the original package, and the adapter that lets the native core call any store object.

const { describe } = require('./errors')

const REQUIRED = ['set', 'getAllKeys', 'clearAll']
const OPTIONAL = ['connect', 'disconnect', 'isConnected', 'del', 'setTTL']

/**
 * Base class of custom stores, as in the original package. Extend it (or set `MyStore.prototype.__proto__ =
 * Store.prototype`) and implement `set`, `getAllKeys` and `clearAll`; `connect`, `disconnect`, `isConnected`, `del`
 * and `setTTL` are optional. Any method may return a value, return a Promise, or (with a callback parameter) call back
 * node-style.
 */
class Store {
  /** Stores `key` (a URL path) with `value` (always 1). */
  set (key, value) { throw new Error("Missing 'set' implementation!") }
  /** Calls back `(err, keys)` with every stored key (or returns them, or a Promise of them). */
  getAllKeys (callback) { throw new Error("Missing 'getAllKeys' implementation!") }
  /** Removes every stored key. */
  clearAll () { throw new Error("Missing 'clearAll' implementation!") }
}

/** Names of the required methods `store` lacks (an inherited base-class placeholder counts as lacking). */
function missingMethods (store) {
  return REQUIRED.filter((m) => typeof store[m] !== 'function' || store[m] === Store.prototype[m])
}

/** Names of the optional methods `store` has. */
function optionalMethods (store) {
  return OPTIONAL.filter((m) => typeof store[m] === 'function')
}

/** A store's failure as an Error that says something: a store may throw or reject with anything, or nothing. */
function failure (reason) {
  if (reason instanceof Error) return reason.message ? reason : new Error(`${reason.name || 'an error'} without a message`)
  let what
  try {
    what = describe(reason)
  } catch {
    what = 'a value that cannot be described'
  }
  return new Error(`it threw or rejected with ${what}`)
}

// The methods whose answer is a value (the others answer nothing).
const ANSWERING = new Set(['getAllKeys', 'isConnected'])

/**
 * Calls `store[method](...args)` with `this` bound to the store, whatever its style: a returned value or thenable,
 * or a node-style callback when the function declares one more parameter than `args`. A function that does both (an
 * `async getAllKeys (cb)` calling `cb`) answers through whichever comes first with an answer: its callback, or its
 * promise settling with a value (or rejecting); a promise of nothing does not answer a method whose answer is a value.
 */
function invoke (store, method, args) {
  const fn = store[method]
  return new Promise((resolve, reject) => {
    const fail = (reason) => reject(failure(reason))
    const usesCallback = fn.length > args.length
    let settled = false
    const callback = (err, value) => {
      if (settled) return
      settled = true
      if (err) fail(err)
      else resolve(value)
    }
    let result
    try {
      result = usesCallback ? fn.call(store, ...args, callback) : fn.call(store, ...args)
    } catch (err) {
      fail(err)
      return
    }
    if (result && typeof result.then === 'function') {
      result.then((value) => {
        if (settled) return
        if (usesCallback && value === undefined && ANSWERING.has(method)) return // its callback answers
        settled = true
        resolve(value)
      }, (err) => {
        if (settled) return
        settled = true
        fail(err)
      })
    } else if (!usesCallback) {
      settled = true
      resolve(result)
    }
  })
}

/**
 * The function the native core calls for every store operation: `({ method, key, value }) => Promise`. Connects first
 * when the store says it is not connected, as the original did.
 */
function dispatcher (store) {
  const has = new Set(optionalMethods(store))
  let connecting = null
  // The native side names the method it asked for ('set'): one called before it that fails is named in the message.
  const first = (method) => invoke(store, method, []).catch((err) => {
    throw new Error(`not called, as store method '${method}' failed: ${err.message}`)
  })
  async function ensureConnected () {
    if (!has.has('isConnected') || !has.has('connect')) return
    if (await first('isConnected')) return
    // Calls in flight together share one connect().
    if (!connecting) connecting = first('connect').finally(() => { connecting = null })
    await connecting
  }
  return async function call ({ method, key, value }) {
    if (method !== 'disconnect') await ensureConnected()
    switch (method) {
      case 'set': return void (await invoke(store, 'set', [key, value]))
      case 'setTTL': return void (await invoke(store, 'setTTL', [key, value]))
      case 'del': return void (await invoke(store, 'del', [key]))
      case 'getAllKeys': return invoke(store, 'getAllKeys', [])
      case 'clearAll': return void (await invoke(store, 'clearAll', []))
      case 'disconnect': return void (await invoke(store, 'disconnect', []))
      default: throw new Error(`unknown store method ${method}`)
    }
  }
}

module.exports = { Store, missingMethods, optionalMethods, dispatcher, REQUIRED, OPTIONAL }
