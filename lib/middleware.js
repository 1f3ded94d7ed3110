'use strict'

// Express/connect middleware: tracks the URL of every cacheable response once it has ended.

const { ServerResponse, OutgoingMessage } = require('node:http')
const { argType, argValue, describe } = require('./errors')
const { MAX_URL_LENGTH, MIDDLEWARE_OPTIONS: OPTIONS, optBoolean, unknownOptions } = require('./options')

const DEFAULT_METHODS = ['GET', 'HEAD']
const { getHeader } = OutgoingMessage.prototype
const UNCACHEABLE = /(?:^|,)\s*(?:no-store|private)\s*(?:[=,]|$)/i

/** True when the request came through CloudFront (`X-Amz-Cf-Id`, a CloudFront `Via`, or its User-Agent). */
function fromCloudFront (req) {
  const h = req.headers || {}
  if (h['x-amz-cf-id']) return true
  const via = Array.isArray(h.via) ? h.via.join(',') : h.via
  if (typeof via === 'string' && /cloudfront/i.test(via)) return true
  return h['user-agent'] === 'Amazon CloudFront'
}

/** True when a Cache-Control header value forbids shared caches to store the response (`no-store` or `private`). */
function forbidsSharedCache (value) {
  if (value === undefined || value === null) return false
  if (Array.isArray(value)) value = value.join(',')
  const lower = String(value).toLowerCase() // the same string when it is lower case already, as usual
  // Most responses name neither directive: two substring scans decide them; the others get the exact rule.
  if (!lower.includes('no-store') && !lower.includes('private')) return false
  return UNCACHEABLE.test(lower)
}

// A Cache-Control line of a response's written header block (`res._header`, its status line first).
const WRITTEN_CACHE_CONTROL = /\r\ncache-control[ \t]*:[ \t]*([^\r\n]*)/gi

/**
 * The Cache-Control a response's header block holds (its lines joined with ','), or undefined. `getHeader` does not
 * return the headers `writeHead(status, headers)` wrote directly (no `setHeader` before it: a plain server, or Express
 * with `x-powered-by` disabled): Node keeps them nowhere else once sent. Read only when `getHeader` found none.
 */
function writtenCacheControl (res) {
  const head = res._header
  if (typeof head !== 'string') return undefined
  let value
  WRITTEN_CACHE_CONTROL.lastIndex = 0
  for (let m; (m = WRITTEN_CACHE_CONTROL.exec(head)) !== null;) value = value === undefined ? m[1] : `${value},${m[1]}`
  return value
}

/** Marks a returned promise handled: a Tracker has logged its failure already; another object's is dropped. */
function handled (result) {
  if (result && typeof result.catch === 'function') result.catch(() => {})
}

function optFunction (options, key) {
  const v = options[key]
  if (v === undefined || v === null) return undefined
  if (typeof v !== 'function') throw argType(`options.${key}`, 'a function', v)
  return v
}

function parseMethods (methods) {
  if (methods === undefined || methods === null) return new Set(DEFAULT_METHODS)
  if (!Array.isArray(methods) || !methods.every((m) => typeof m === 'string' && m.length > 0)) {
    throw argType('options.methods', 'an array of method names', methods)
  }
  return new Set(methods.map((m) => m.toUpperCase()))
}

function parseStatuses (statuses) {
  if (statuses === undefined || statuses === null) return (status) => status >= 200 && status < 400
  if (typeof statuses === 'function') return statuses
  if (!Array.isArray(statuses) || !statuses.every((s) => Number.isInteger(s))) {
    throw argType('options.statuses', 'a function or an array of status codes', statuses)
  }
  const set = new Set(statuses)
  return (status) => set.has(status)
}

function parseTtl (ttl) {
  if (ttl === undefined || ttl === null || typeof ttl === 'function') return ttl ?? undefined
  if (typeof ttl !== 'number') throw argType('options.ttl', 'a number of seconds or a function', ttl)
  if (!Number.isFinite(ttl) || ttl < 0) throw argValue('options.ttl', 'must be a finite number >= 0', ttl)
  return ttl
}

/**
 * Builds the middleware `(req, res, next)` for `tracker`. It notes the request's URL (`req.originalUrl`, else
 * `req.url`) and calls `next()` at once; the response is decided once it has ended: a request with one of `methods`
 * (GET, HEAD) whose status passes `statuses` (2xx, 3xx) and whose Cache-Control has neither `no-store` nor `private`
 * is tracked; a 404 that `statuses` does not pass stops tracking the URL (`removeOn404`); a response destroyed before
 * it ended is left alone. `onlyCloudFront` limits all this to requests CloudFront forwarded; `filter(req, res)`
 * returning false leaves a request alone; `ttl` (seconds, or `(req, res) => seconds`) is passed to `storeUrl` (a
 * function's answer that is not a number >= 0 is logged once, and the URL tracked without a TTL).
 * `filter` and `ttl` run once the response has ended.
 * Nothing it does is awaited in the request path, and nothing it does can throw into the server: failures (a store
 * that is down, a throwing `filter`) go to the tracker's logger.
 */
function middleware (tracker, options = {}) {
  if (!tracker || typeof tracker.storeUrl !== 'function' || typeof tracker.removeUrl !== 'function') {
    throw argType('tracker', 'a tracker', tracker)
  }
  if (options === null || typeof options !== 'object') throw argType('options', 'of type object', options)
  const methods = parseMethods(options.methods)
  const passes = parseStatuses(options.statuses)
  const ttl = parseTtl(options.ttl)
  const filter = optFunction(options, 'filter')
  const removeOn404 = optBoolean(options, 'removeOn404', true)
  const onlyCloudFront = optBoolean(options, 'onlyCloudFront', false)
  // A misspelt option (onlyCloudfront) would track what it was meant to leave alone: said, once.
  for (const warning of unknownOptions(options, 'middleware', OPTIONS)) {
    if (typeof tracker._log === 'function') tracker._log('warn', warning)
  }

  function report (err) {
    logError(`cf-invalidation-tracker: middleware failed: ${err && err.message}`)
  }
  function logError (message) {
    try {
      if (typeof tracker._log === 'function') tracker._log('error', message)
    } catch {}
  }
  // A `ttl` function that returns no number of seconds (`() => process.env.PAGE_TTL`, a string) is the app's mistake,
  // not the client's: the URL is tracked without a TTL (until it is sent, the safe side) and the mistake is logged,
  // once, rather than every response left untracked in silence.
  let badTtlLogged = false
  function ttlFor (req, res) {
    const seconds = ttl(req ?? res.req, res)
    if (seconds === undefined || seconds === null) return undefined
    if (typeof seconds === 'number' && seconds >= 0 && seconds < Infinity) return seconds
    if (!badTtlLogged) {
      badTtlLogged = true
      logError(`cf-invalidation-tracker: middleware ttl returned ${describe(seconds)}, not a number of seconds >= 0: ` +
        'URLs it is given for are tracked without a TTL (until they are sent)')
    }
    return undefined
  }
  // A URL from the internet that cannot become a path is the client's junk, not our failure: not logged. A Tracker
  // makes no promise per request (its writer logs a write that fails, and retries it); another object's promise is
  // handled.
  const quiet = typeof tracker._trackQuietly === 'function'
  const track = quiet
    ? (url, seconds) => tracker._trackQuietly(url, seconds)
    : (url, seconds) => handled(tracker.storeUrl(url, seconds))
  // A 404's removal, likewise; one a sweep found goes before the URLs tracked since the last hand-over (see done).
  const untrack = quiet
    ? (url, swept) => tracker._removeQuietly(url, swept)
    : (url) => handled(tracker.removeUrl(url))

  // A response is decided once it has ended, when its status and headers are final: most have ended by the time the
  // handlers the middleware passed the request to return, and are decided then. It only notes the others (and their
  // URL): the tracker sweeps the noted responses at its next hand-over (once per write interval), many at a time, so
  // that a request allocates nothing and adds no listener and no property to the response. A response still in
  // progress at its first sweep is looked at again at the next; at the second, it gets a 'finish' listener instead.
  // One destroyed before it ended is not tracked.
  // Express changes the prototype of each request and response and then adds properties, which leaves each with a
  // hidden class of its own in V8, so every property read on them costs a lookup in V8's runtime: the middleware
  // reads as few as it can (`finished`, what `writableEnded` returns, and the status) and calls `getHeader` without
  // looking it up on the response.
  let noted = [] // URL, response, URL, response…: the responses noted since the last sweep
  let carried = [] // the same, of the responses still in progress at the last sweep
  const sweeper = { sweep }
  const sweeps = typeof tracker._sweepSoon === 'function'

  function sweep () {
    const older = carried
    const newer = noted
    carried = []
    noted = []
    for (let i = 0; i < older.length; i += 2) settle(older[i], older[i + 1], false)
    for (let i = 0; i < newer.length; i += 2) settle(newer[i], newer[i + 1], true)
    return carried.length !== 0
  }

  function settle (url, res, carry) {
    if (res.finished) {
      decide(url, res, true)
    } else if (res.destroyed) {
      // never ended: not tracked, as 'finish' never comes
    } else if (carry) {
      carried.push(url, res)
    } else {
      res.on('finish', () => decide(url, res, false))
    }
  }

  /** Decides a Node server's response that has ended; `swept`: found ended by a sweep, some time since the last. */
  function decide (url, res, swept) {
    done(url, null, res, getHeader.call(res, 'cache-control') ?? writtenCacheControl(res), swept)
  }

  /**
   * Decides a response that has ended; `req` is null when it is to be found as `res.req` (read only if needed).
   * A removal (a 404) that a sweep found goes before the URLs tracked since the last hand-over, as the response may
   * have ended before them: a URL served again meanwhile stays tracked, the safe side (one path more in the next
   * send, rather than a stale page left in the cache).
   */
  function done (url, req, res, cacheControl, swept = false) {
    try {
      // Longer URLs cannot become invalidation paths: left alone without a log line per request.
      if (typeof url !== 'string' || url.length === 0 || url.length > MAX_URL_LENGTH) return
      const status = res.statusCode
      const tracks = passes(status)
      if (!tracks && !(status === 404 && removeOn404)) return
      if (filter && !filter(req ?? res.req, res)) return
      if (!tracks) {
        untrack(url, swept)
        return
      }
      if (forbidsSharedCache(cacheControl)) return
      const seconds = typeof ttl === 'function' ? ttlFor(req, res) : ttl
      track(url, seconds === null || seconds === 0 ? undefined : seconds)
    } catch (err) {
      report(err)
    }
  }

  return function cfInvalidationTracker (req, res, next) {
    let url // of a Node server's response, decided once the handlers after the middleware return
    try {
      if (methods.has(req.method) && (!onlyCloudFront || fromCloudFront(req))) {
        // The URL the request came with (Express and connect keep it as `originalUrl` while they route).
        const requested = req.originalUrl || req.url
        if (sweeps && res instanceof ServerResponse) url = requested
        else decideOnFinish(requested, req, res)
      }
    } catch (err) {
      report(err)
    }
    try {
      if (typeof next === 'function') next()
    } finally {
      if (url !== undefined) settleNow(url, res)
    }
  }

  /** Another kind of response (a test double, say), or a tracker of another kind: decided on 'finish'. */
  function decideOnFinish (url, req, res) {
    res.on('finish', () => {
      const cacheControl = typeof res.getHeader === 'function' ? res.getHeader('cache-control') ?? writtenCacheControl(res) : undefined
      done(url, req, res, cacheControl)
    })
  }

  /**
   * Once the handlers after the middleware returned: a response they ended (most do, at once) is decided now, while
   * what Node just read of it is cached, and is not held; one still in progress is noted, for the sweep.
   */
  function settleNow (url, res) {
    try {
      if (res.finished) decide(url, res, false)
      else if (noted.push(url, res) === 2) tracker._sweepSoon(sweeper)
    } catch (err) {
      report(err)
    }
  }
}

module.exports = { middleware, fromCloudFront, forbidsSharedCache }
