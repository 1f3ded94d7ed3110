'use strict'

const { NativeTracker, BatchEnd, BATCH_REMOVE_TTL } = require('./binding.js')
const { parseOptions, optBoolean, MAX_URL_LENGTH } = require('./lib/options')
const { Store } = require('./lib/store')
const { argType, argValue, fromNative, fromCoded } = require('./lib/errors')


function checkUrl (url, name = 'url') {
  if (typeof url !== 'string') throw argType(name, 'of type string', url)
  if (url.length === 0) throw argValue(name, 'must not be empty', url)
}

function isArgumentError (err) {
  return err.code === 'ERR_INVALID_ARG_VALUE' || err.code === 'ERR_INVALID_ARG_TYPE'
}

// storeUrl calls (and the middleware's removals) are gathered here and handed to the native tracker in one call per
// event-loop turn (or per GATHER_MAX calls), so that a call costs an array push rather than a crossing into native
// code. A URL that starts with '/' and is at most GATHERABLE_LENGTH long can always become a path (a UTF-16 code unit
// encodes to at most 9 characters, as in '%E2%82%AC'); any other goes through the native call that can refuse it with
// its own error.
const GATHER_MAX = 4096
const GATHERABLE_LENGTH = Math.floor(MAX_URL_LENGTH / 9)
// The options sendInvalidation takes; any other name is refused.
const SEND_OPTIONS = new Set(['wait', 'dryRun'])
// How long process exit may block writing what is still buffered.
const EXIT_FLUSH_MS = 1000
// How long a write to a custom store that failed keeps the process alive while the writer retries it.
const RETRY_ALIVE_MS = 10_000

// Live trackers, flushed when the process exits.
const live = new Set()
let exitHooked = false
const forget = new FinalizationRegistry((ref) => live.delete(ref))
function flushAtExit () {
  for (const ref of live) ref.deref()?._flushAtExit()
}

/**
 * The TTL (0: none) under which a storeUrl call can be gathered, or undefined when it needs its own native call: a
 * URL that is not a plain path, or a TTL the native call must check or refuse.
 */
function gatherableTtl (url, ttlInSec) {
  if (typeof url === 'string' && url.length <= GATHERABLE_LENGTH && url.charCodeAt(0) === 47 /* '/' */) {
    if (ttlInSec === undefined || ttlInSec === null) return 0
    if (typeof ttlInSec === 'number' && ttlInSec >= 0 && ttlInSec < Infinity) return ttlInSec
  }
  return undefined
}

function checkTtl (ttl, name = 'ttlInSec') {
  if (typeof ttl !== 'number') throw argType(name, 'of type number', ttl)
  if (!Number.isFinite(ttl) || ttl < 0) throw argValue(name, 'must be a finite number >= 0', ttl)
}

/**
 * Checks a call's options object: a plain object naming only what the call takes (`known`), so that a misspelt
 * option is not lost; `expected` says what it takes.
 */
function checkCallOptions (options, known, expected) {
  const proto = options === null || typeof options !== 'object' ? undefined : Object.getPrototypeOf(options)
  if (Array.isArray(options) || (proto !== Object.prototype && proto !== null)) throw argType('options', expected, options)
  const unknown = Object.keys(options).filter((k) => !known.includes(k))
  if (unknown.length > 0) throw argValue('options', `has no option ${unknown.join(', ')} (it takes ${known.join(' and ')})`, options)
}

/**
 * Tracks the URLs a server serves and invalidates them on CloudFront. Every method returns a Promise; one nobody
 * awaits never becomes an unhandled rejection: its failure goes to the logger.
 */
class Tracker {
  constructor (options) {
    const { native, logger, dispatch, warnings } = parseOptions(options)
    this._logger = logger
    for (const warning of warnings) this._log('warn', warning)
    const log = logger ? ({ level, message }) => this._log(level, message) : undefined
    try {
      this._native = new NativeTracker(native, log, dispatch)
    } catch (err) {
      throw fromNative(err)
    }
    // Calls nobody awaits (the middleware's) are handed over by one timer, once per write interval, and written at
    // once: a busy server's responses of an interval share one sweep, one crossing and one write. Each of these costs
    // a busy server more than its instructions (likely as it runs with cold caches between requests): fewer, larger
    // ones cost it less.
    this._quietMs = this._native.flushIntervalMs
    // A custom store is written to on this thread, so the process must stay alive until its writes are done (a
    // window's promise does that); the other stores are written at exit from native code, blocking.
    this._writesOnThisThread = dispatch !== undefined
    this._window = -1
    this._written = null
    this._urls = []
    this._lengths = new Uint32Array(GATHER_MAX)
    this._ttls = new Float64Array(GATHER_MAX)
    this._gathered = null
    this._timer = null
    this._sweepers = new Set()
    this._sweeping = false
    this._handOverPaused = () => this._handOver(BatchEnd.Paused)
    this._handOverDue = () => this._handOver(BatchEnd.Due)
    if (!exitHooked) {
      process.once('exit', flushAtExit)
      exitHooked = true
    }
    const ref = new WeakRef(this)
    live.add(ref)
    forget.register(this, ref)
    for (const m of ['storeUrl', 'setUrlTTL', 'removeUrl', 'listUrls', 'flush', 'disconnect', 'sendInvalidation', 'normalize',
      'middleware', 'listDistributions', 'invalidationStatus']) {
      this[m] = this[m].bind(this)
    }
  }

  /** Writes a log line; a logger that throws, or whose promise rejects, is not allowed to take the process down. */
  _log (level, message) {
    if (!this._logger) return
    try {
      const written = this._logger[level](message)
      if (written && typeof written.catch === 'function') written.catch(() => {})
    } catch {}
  }

  /** Logs a failure and returns the promise, marked handled so that nobody has to await it. */
  _settle (what, promise, quiet) {
    promise.catch((err) => {
      if (quiet && quiet(err)) return
      this._log('error', `cf-invalidation-tracker: ${what} failed: ${err.message}`)
    })
    return promise
  }

  _run (what, fn) {
    let promise
    try {
      this._handOver()
      promise = Promise.resolve(fn()).catch((err) => { throw fromNative(err) })
    } catch (err) {
      promise = Promise.reject(fromNative(err))
    }
    return this._settle(what, promise)
  }

  /**
   * Runs a call the native buffer takes in order (storeUrl, setUrlTTL, removeUrl): `fn` returns its write window,
   * whose promise it shares. `quiet(err)` true leaves a refusal unlogged. The calls gathered so far are handed over
   * first, unless `beforeGathered`: then this call goes before them.
   */
  _buffered (what, fn, quiet, beforeGathered = false) {
    let window
    try {
      if (!beforeGathered) this._handOver()
      window = fn()
    } catch (err) {
      return this._settle(what, Promise.reject(fromNative(err)), quiet)
    }
    return this._writtenIn(window)
  }

  /**
   * Tracks a URL. `ttlInSec` (or `{ ttl }`) stops tracking it after that many seconds; `{ wildcard: true }` tracks a
   * wildcard prefix the caller asks for. Resolves once the URL is in the store (writes are batched).
   */
  storeUrl (url, ttlInSec) {
    const ttl = gatherableTtl(url, ttlInSec)
    if (ttl !== undefined) return this._gather(url, ttl)
    return this._trackNow(url, ttlInSec)
  }

  /**
   * The middleware's storeUrl: nobody awaits it, so it returns nothing, and argument errors are not logged (URLs from
   * the internet, whose junk must not flood the log); a failure to write is logged.
   */
  _trackQuietly (url, ttlInSec) {
    const ttl = gatherableTtl(url, ttlInSec)
    if (ttl !== undefined) {
      this._gatherQuietly(url, ttl)
      return
    }
    this._trackNow(url, ttlInSec, true)
  }

  /** storeUrl through its own native call, which validates the URL fully. */
  _trackNow (url, ttlInSec, quietArgs = false) {
    return this._buffered('storeUrl', () => {
      checkUrl(url)
      let ttl
      let wildcard = false
      if (ttlInSec !== undefined && ttlInSec !== null) {
        if (typeof ttlInSec === 'object') {
          checkCallOptions(ttlInSec, ['ttl', 'wildcard'], 'a number of seconds or an object { ttl, wildcard }')
          ttl = ttlInSec.ttl ?? undefined
          wildcard = optBoolean(ttlInSec, 'wildcard', false, 'options')
          if (ttl !== undefined) checkTtl(ttl, 'options.ttl')
        } else {
          checkTtl(ttlInSec)
          ttl = ttlInSec
        }
      }
      return this._native.track(url, ttl, wildcard)
    }, quietArgs ? isArgumentError : undefined)
  }

  /** The promise of write window `window` (one per window, its failure logged once). */
  _writtenIn (window) {
    if (window !== this._window) {
      this._window = window
      this._written = this._settle('writing to the store', this._native.written(window).catch((err) => { throw fromNative(err) }))
      // A custom store is written on this thread: while the writer retries a write that failed, the process is kept
      // alive for it (up to RETRY_ALIVE_MS), not left to end with the calls unwritten.
      if (this._writesOnThisThread) this._written.catch(() => this._native.writtenWithin(window, RETRY_ALIVE_MS).catch(() => {}))
    }
    return this._written
  }

  /** Adds a call to the gathered ones (TTL 0: none); its promise is the one of its write window. */
  _gather (url, ttl) {
    if (this._gathered === null) {
      let resolve
      const promise = new Promise((_resolve) => { resolve = _resolve })
      promise.catch(() => {}) // its window's promise logs the failure
      this._gathered = { promise, resolve, immediate: setImmediate(this._handOverPaused) }
    }
    const { promise } = this._gathered
    this._push(url, ttl)
    return promise
  }

  /**
   * The middleware's calls (storeUrl, and removeUrl with `ttl` BATCH_REMOVE_TTL): nobody awaits them, so no promise
   * is made, and they are handed over by a timer (or with any other call); a failure to write them is logged by the
   * writer, which retries. The timer keeps the process alive until the hand-over; after it, the write is made at exit
   * if not before (see _handOverGathered).
   */
  _gatherQuietly (url, ttl) {
    if (this._urls.length === 0 && this._timer === null) {
      this._timer = setTimeout(this._handOverDue, this._quietMs)
    }
    this._push(url, ttl)
  }

  _push (url, ttl) {
    const n = this._urls.length
    this._urls.push(url)
    this._lengths[n] = url.length
    this._ttls[n] = ttl
    if (n + 1 === GATHER_MAX) this._handOver()
  }

  /**
   * Asks for `sweeper.sweep()` at the next hand-over, at most `_quietMs` from now (the middleware's way of deciding
   * the responses it saw, many at a time). `sweep()` returns true while it holds responses to look at again.
   */
  _sweepSoon (sweeper) {
    this._sweepers.add(sweeper)
    if (this._timer === null) this._timer = setTimeout(this._handOverDue, this._quietMs)
  }

  /** Runs the sweeps asked for; one that tracks enough to fill the gathering does not sweep again from inside. */
  _sweep () {
    this._sweeping = true
    try {
      for (const sweeper of this._sweepers) {
        if (!sweeper.sweep()) this._sweepers.delete(sweeper)
      }
    } finally {
      this._sweeping = false
    }
  }

  /**
   * Hands the gathered calls to the native tracker, in order, after the middleware's sweeps. Every other method does
   * this first. `then` says what follows: `Running`, more calls may (the writer goes on gathering); `Paused`, the
   * synchronous run of calls ended (the event loop came round), so the writer need not wait for more; `Due`, the
   * timer's hand-over, of calls gathered for an interval: written at once.
   */
  _handOver (then = BatchEnd.Running) {
    if (this._sweepers.size !== 0 && !this._sweeping) this._sweep()
    if (this._timer !== null) {
      clearTimeout(this._timer)
      this._timer = null
    }
    const n = this._urls.length
    if (n !== 0) this._handOverGathered(n, then)
    // Responses still in progress are looked at again at the next hand-over.
    if (this._sweepers.size !== 0 && this._timer === null) this._timer = setTimeout(this._handOverDue, this._quietMs)
  }

  _handOverGathered (n, then) {
    const urls = this._urls
    const gathered = this._gathered
    this._urls = []
    this._gathered = null
    if (gathered !== null) clearImmediate(gathered.immediate)
    let written
    try {
      const window = this._native.trackBatch(urls.join(''), this._lengths.subarray(0, n), this._ttls.subarray(0, n), then)
      // Only the middleware's calls (none from storeUrl): nobody awaits their window, so it gets no promise (the
      // writer logs a write that fails, and retries it), unless the process must stay alive for the write.
      if (gathered !== null || this._writesOnThisThread) written = this._writtenIn(window)
    } catch (err) {
      // Not expected for URLs that passed the gathering check; made one by one, so that a refusal costs one URL. The
      // TTLs are copied first: each call hands over what was gathered since, into the same arrays.
      this._log('error', `cf-invalidation-tracker: a batch of gathered calls failed (${fromNative(err).message}); making them one by one`)
      const ttls = this._ttls.slice(0, n)
      for (let i = 0; i < n; i++) {
        written = ttls[i] === BATCH_REMOVE_TTL
          ? this._removal(urls[i], isArgumentError)
          : this._trackNow(urls[i], ttls[i] || undefined)
      }
    }
    if (gathered !== null) gathered.resolve(written)
  }

  /**
   * Drops the calls not yet written, those gathered included: for a process that gives up on a store that failed
   * (the command line), so that the writer does not retry them nor the exit flush wait for them. Returns what was
   * dropped ("2 tracked URLs"), or null.
   */
  _discard () {
    this._handOver()
    return this._native.discard()
  }

  /** At process exit: writes what is still buffered, blocking for at most EXIT_FLUSH_MS. */
  _flushAtExit () {
    try {
      this._handOver()
      if (!this._native.flushBlocking(EXIT_FLUSH_MS)) {
        this._log('warn', 'cf-invalidation-tracker: URLs still buffered at exit were not written (a custom store cannot be ' +
          'written to while the process exits): await invl.flush() before process.exit()')
      }
    } catch (err) {
      this._log('warn', `cf-invalidation-tracker: URLs still buffered at exit were not written: ${fromNative(err).message}`)
    }
  }

  /** Changes how long a tracked URL stays tracked (0: until it is sent). */
  setUrlTTL (url, ttlInSec) {
    return this._buffered('setUrlTTL', () => {
      checkUrl(url)
      checkTtl(ttlInSec)
      return this._native.setTtl(url, ttlInSec)
    })
  }

  /**
   * Stops tracking a URL (the original's 404-handler call); `removeUrl(prefix, { wildcard: true })`, the wildcard
   * `storeUrl(prefix, { wildcard: true })` tracks. Any other second argument is refused.
   */
  removeUrl (url, options) {
    if (options === undefined) return this._removal(url)
    return this._buffered('removeUrl', () => {
      checkUrl(url)
      checkCallOptions(options, ['wildcard'], 'an object { wildcard }')
      const wildcard = optBoolean(options, 'wildcard', false, 'options')
      return this._native.remove(url, wildcard)
    })
  }

  /**
   * The middleware's removeUrl (a 404), quiet like its storeUrl about a URL that cannot become a path (junk from the
   * internet is not logged). A 404 decided as its handlers return is gathered with the other calls, in order; one a
   * sweep found (`beforeGathered`) ended at some point since the last hand-over, so it goes before the calls gathered
   * since.
   */
  _removeQuietly (url, beforeGathered = false) {
    if (!beforeGathered && gatherableTtl(url, undefined) !== undefined) this._gatherQuietly(url, BATCH_REMOVE_TTL)
    else this._removal(url, isArgumentError, beforeGathered)
  }

  /** removeUrl through its own native call; `quiet` and `beforeGathered` as for `_buffered`. */
  _removal (url, quiet = undefined, beforeGathered = false) {
    return this._buffered('removeUrl', () => {
      checkUrl(url)
      return this._native.remove(url)
    }, quiet, beforeGathered)
  }

  /**
   * Resolves to what the next send will invalidate, sorted: tracked URLs and flood-guard wildcards (before the send
   * adds a directory's other forms or `?*`, or collapses them: a dry run's batches give the exact paths).
   */
  listUrls () {
    return this._run('listUrls', () => this._native.list())
  }

  /** Writes buffered calls (storeUrl, setUrlTTL, removeUrl) to the store now. */
  flush () {
    return this._run('flush', () => this._native.flush())
  }

  /** Writes buffered calls and closes the store's connections; the next call reconnects. */
  disconnect () {
    return this._run('disconnect', () => this._native.disconnect())
  }

  /** The path a URL is tracked and sent as. Throws on a URL that cannot become a path. */
  normalize (url) {
    checkUrl(url)
    try {
      return this._native.normalize(url)
    } catch (err) {
      throw fromNative(err)
    }
  }

  /**
   * Sends every tracked URL to CloudFront, forgets exactly what CloudFront accepted, then disconnects.
   * `{ wait: true }` polls until every invalidation completed; `{ dryRun: true }` only reports what it would send.
   * Rejects (with `err.report`) when batches had to be kept for a later send.
   */
  sendInvalidation (options = {}) {
    return this._run('sendInvalidation', async () => {
      if (options === null || typeof options !== 'object') throw argType('options', 'of type object', options)
      // A misspelt dryRun (dry_run, dryrun) must not make a real, billed send.
      const unknown = Object.keys(options).filter((k) => !SEND_OPTIONS.has(k))
      if (unknown.length > 0) throw argValue('options', `has no option ${unknown.join(', ')} (it takes wait and dryRun)`, options)
      const wait = optBoolean(options, 'wait', false)
      const dryRun = optBoolean(options, 'dryRun', false)
      let raw
      try {
        raw = await this._native.send(wait, dryRun)
      } finally {
        await this._native.disconnect().catch(() => {})
      }
      const { error, ...report } = raw
      if (!dryRun && report.paths === 0 && report.batches.length === 0) this._log('info', 'Nothing to invalidate')
      if (error) {
        const err = fromCoded(error)
        err.report = report
        throw err
      }
      return report
    })
  }

  /** Express/connect middleware that tracks cacheable responses (see the README). */
  middleware (options) {
    return require('./lib/middleware').middleware(this, options)
  }

  /** The account's distributions, with their origins. */
  listDistributions () {
    return this._run('listDistributions', () => this._native.listDistributions())
  }

  /** The status of one invalidation (`InProgress`, `Completed`). */
  invalidationStatus (id) {
    return this._run('invalidationStatus', () => {
      checkUrl(id, 'id')
      return this._native.invalidationStatus(id)
    })
  }
}

/** `require('cf-invalidation-tracker')(options)`: the original factory. */
function createTracker (options) {
  return new Tracker(options)
}

createTracker.Tracker = Tracker
createTracker.Store = Store
createTracker.createTracker = createTracker
createTracker.default = createTracker
createTracker.MAX_URL_LENGTH = MAX_URL_LENGTH
Object.defineProperties(createTracker, {
  invalidateS3Event: { enumerable: true, get: () => require('./lib/s3').invalidateS3Event },
  findDistributionByOrigin: { enumerable: true, get: () => require('./lib/s3').findDistributionByOrigin }
})

module.exports = createTracker
