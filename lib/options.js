'use strict'

// Validates the options of the original package's shape (plus this version's) and turns them into the native
// tracker's flat options. Throws before anything is created; does no I/O.

const { argType, argValue } = require('./errors')
const { missingMethods, optionalMethods, dispatcher } = require('./store')

const MISSING_CF = 'Missing CloudFront secret key, access key, or distribution ID'
const UINT32_MAX = 0xffffffff
/** CloudFront's longest invalidation path; a longer URL cannot be tracked. */
const MAX_URL_LENGTH = 4000

// Each store object's id: the trackers of this process given the same object share its claims (they live in the
// process), so that two of them sending never both send what one claimed.
const storeIds = new WeakMap()
let lastStoreId = 0

function storeId (store) {
  if (!storeIds.has(store)) storeIds.set(store, ++lastStoreId)
  return storeIds.get(store)
}

function isObject (v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v)
}

function optString (obj, key, where) {
  const v = obj[key]
  if (v === undefined || v === null) return undefined
  if (typeof v !== 'string') throw argType(`${where}.${key}`, 'of type string', v)
  return v
}

function optInt (options, key, min, max) {
  const v = options[key]
  if (v === undefined || v === null) return undefined
  if (typeof v !== 'number') throw argType(`options.${key}`, 'of type number', v)
  if (!Number.isInteger(v) || v < min || v > max) {
    throw argValue(`options.${key}`, `must be an integer from ${min} to ${max}`, v)
  }
  return v
}

/** A boolean option `key` of `options` (named `where.key` in errors), or `fallback` when it is not given. */
function optBoolean (options, key, fallback, where = 'options') {
  const v = options[key]
  if (v === undefined || v === null) return fallback
  if (typeof v !== 'boolean') throw argType(`${where}.${key}`, 'of type boolean', v)
  return v
}

// The option names a tracker takes; another is most likely misspelt, and is warned of (not refused: an app may pass
// an object it shares with other code).
const KNOWN_OPTIONS = {
  options: ['cf', 'redis', 'store', 'logger', 'batchSize', 'maxPaths', 'maxTrackedUrls', 'sendTimeoutMs', 'pollIntervalMs',
    'leaseMs', 'flushIntervalMs', 'storeTimeoutMs', 'bufferCapacity', 'queryStrings', 'indexDocument', '_claimName'],
  'options.cf': ['dist', 'access_key', 'accessKeyId', 'secret_key', 'secretAccessKey', 'session_token', 'sessionToken',
    'region', 'endpoint'],
  'options.redis': ['url', 'REDIS_URL', 'port', 'hostname', 'host', 'username', 'password', 'db', 'prefix', 'tls', 'cluster', 'sentinel'],
  'options.redis.tls': ['ca', 'cert', 'key', 'rejectUnauthorized'],
  'options.redis.sentinel': ['name', 'nodes', 'db']
}

/** A copy of `object` with only the names `where` takes. */
function knownOnly (object, where) {
  return Object.fromEntries(Object.entries(object).filter(([k]) => KNOWN_OPTIONS[where].includes(k)))
}

// Names other clients give an option, by the (squashed) name, with the one the tracker takes.
const OTHER_NAMES = { database: 'db', dbnumber: 'db', pass: 'password', user: 'username', distribution: 'dist',
  distributionid: 'dist' }

// The options `middleware()` takes. Given to the tracker instead, each is pointed there.
const MIDDLEWARE_OPTIONS = ['methods', 'statuses', 'ttl', 'filter', 'removeOn404', 'onlyCloudFront']

/** An option name as its misspellings often share it: lower case, without `_` and `-`. */
function squash (name) {
  return name.toLowerCase().replace(/[_-]/g, '')
}

/**
 * Warnings for the names in `object` that `where` does not take (`known`, or those listed for it), each with the
 * known name it most likely meant; at the top level, a middleware option is pointed to `middleware()`.
 */
function unknownOptions (object, where, known = KNOWN_OPTIONS[where]) {
  return Object.keys(object).filter((k) => !known.includes(k)).map((k) => {
    const meant = known.find((name) => squash(name) === squash(k) || name === OTHER_NAMES[squash(k)])
    const forMiddleware = where === 'options' && !meant && MIDDLEWARE_OPTIONS.find((name) => squash(name) === squash(k))
    const hint = meant
      ? ` (did you mean ${meant}?)`
      : forMiddleware ? ` (a middleware() option? give it as invl.middleware({ ${forMiddleware} }))` : ''
    return `cf-invalidation-tracker: unknown option ${where}.${k} ignored${hint}`
  })
}

function parseCf (cf) {
  if (cf === undefined || cf === null) throw new Error(MISSING_CF)
  if (!isObject(cf)) throw argType('options.cf', 'of type object', cf)
  const accessKey = optString(cf, 'access_key', 'options.cf') ?? optString(cf, 'accessKeyId', 'options.cf')
  const secretKey = optString(cf, 'secret_key', 'options.cf') ?? optString(cf, 'secretAccessKey', 'options.cf')
  const dist = optString(cf, 'dist', 'options.cf')
  if (!dist || !dist.trim() || Boolean(accessKey) !== Boolean(secretKey)) throw new Error(MISSING_CF)
  if (!/^[A-Za-z0-9]+$/.test(dist)) throw argValue('options.cf.dist', 'must be a distribution ID (letters and digits)', dist)
  const endpoint = optString(cf, 'endpoint', 'options.cf')
  if (endpoint !== undefined && !/^https?:\/\/[^\s]+$/.test(endpoint)) {
    throw argValue('options.cf.endpoint', 'must be an http(s) URL', endpoint)
  }
  return {
    dist,
    accessKey: accessKey || undefined,
    secretKey: secretKey || undefined,
    sessionToken: optString(cf, 'session_token', 'options.cf') ?? optString(cf, 'sessionToken', 'options.cf'),
    region: optString(cf, 'region', 'options.cf'),
    endpoint
  }
}

/**
 * The Redis URL for the original's forms: `{ REDIS_URL }`, `{ port, hostname, password }`, `{ url }` (with a
 * `password` for a URL without credentials), `true`.
 */
function redisUrl (redis, env) {
  if (redis === true) return env.REDIS_URL || 'redis://127.0.0.1:6379'
  if (typeof redis === 'string') {
    if (!/^rediss?:\/\//.test(redis)) throw argValue('options.redis', 'must be a redis:// or rediss:// URL', redis)
    return redis
  }
  if (!isObject(redis)) throw argType('options.redis', 'an object, a URL string or true', redis)
  optString(redis, 'password', 'options.redis')
  optString(redis, 'username', 'options.redis')
  const db = redisDb(redis)
  const asUrl = optString(redis, 'url', 'options.redis')
  const url = asUrl ?? optString(redis, 'REDIS_URL', 'options.redis')
  if (url !== undefined) {
    if (!/^rediss?:\/\//.test(url)) throw argValue('options.redis.url', 'must be a redis:// or rediss:// URL', url)
    // `{ url, password, db }` (node-redis's form): the password and database go with a URL that has none of its own.
    return withDb(withPassword(asUrl === undefined ? withoutUser(url) : url, redis), db)
  }
  const host = optString(redis, 'hostname', 'options.redis') ?? optString(redis, 'host', 'options.redis') ?? '127.0.0.1'
  const given = redis.port ?? 6379
  if (typeof given !== 'number' && !(typeof given === 'string' && /^\d+$/.test(given))) {
    throw argType('options.redis.port', 'a port number', given)
  }
  const port = Number(given)
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw argValue('options.redis.port', 'must be a port number', given)
  const auth = passwordAuth(redis)
  const h = host.includes(':') && !host.startsWith('[') ? `[${host}]` : host
  return withDb(`redis://${auth}${h}:${port}`, db)
}

/**
 * The original's `REDIS_URL` without its user name: Redis To Go's `redis://redistogo:secret@host:port/` and Heroku's
 * older `redis://h:secret@host:port` name a user the original's client never sent (it sent `AUTH secret`), which
 * Redis 6 would take for an ACL user, and refuse.
 */
function withoutUser (url) {
  const [, scheme, userinfo, rest] = url.match(/^(rediss?:\/\/)(?:([^/]*)@)?(.*)$/s)
  if (userinfo === undefined) return url
  const colon = userinfo.indexOf(':')
  return colon === -1 ? `${scheme}${rest}` : `${scheme}${userinfo.slice(colon)}@${rest}`
}

/** `redis.db`: a database number (a number, or a string of digits), or undefined. */
function redisDb (redis) {
  const given = redis.db
  if (given === undefined || given === null) return undefined
  if (!(typeof given === 'number' && Number.isInteger(given) && given >= 0) && !(typeof given === 'string' && /^\d+$/.test(given))) {
    throw argType('options.redis.db', 'a database number', given)
  }
  if (redis.sentinel) throw argValue('options.redis.db', "is for one server: give the master's as sentinel.db", given)
  return Number(given)
}

/** `url` with database `db` (if any); refused when the URL names another. */
function withDb (url, db) {
  if (db === undefined) return url
  const [, base, path, rest] = url.match(/^(rediss?:\/\/[^/?#]*)(\/[^?#]*)?(.*)$/)
  const named = path && path !== '/' ? path.slice(1) : undefined
  if (named === undefined) return `${base}/${db}${rest}`
  if (Number(named) !== db) throw argValue('options.redis.db', `differs from the database the URL names (/${named})`, db)
  return url
}

const PEM = /-----BEGIN [A-Z0-9 ]+-----/

/**
 * One PEM field of `redis.tls`: a string or a Buffer, or for `ca` an array of them. Its text is never echoed in an
 * error (it may be a private key).
 */
function pemField (tls, field) {
  const v = tls[field]
  if (v === undefined || v === null) return undefined
  const name = `options.redis.tls.${field}`
  const parts = field === 'ca' && Array.isArray(v) ? v : [v]
  const texts = parts.map((part) => {
    if (typeof part === 'string') return part
    if (part instanceof Uint8Array) return Buffer.from(part.buffer, part.byteOffset, part.byteLength).toString('latin1')
    throw argType(name, field === 'ca' ? 'PEM text (a string or a Buffer), or an array of them' : 'PEM text (a string or a Buffer)', part)
  })
  if (texts.length === 0 || !texts.every((t) => PEM.test(t))) {
    const err = new RangeError(`The "${name}" argument must be PEM text (-----BEGIN …-----). Received something else`)
    err.code = 'ERR_INVALID_ARG_VALUE'
    throw err
  }
  return texts.join('\n')
}

/**
 * `redis.tls`: true (TLS, trusting the public certificate authorities) or `{ ca, cert, key, rejectUnauthorized }`:
 * `ca` the authorities to trust instead (PEM), `cert` and `key` a client certificate (both or neither), and
 * `rejectUnauthorized: false` to accept a certificate nobody vouches for (Heroku Redis's). Returns undefined when the
 * URL alone decides (no `tls`, or false), else `{ fields, verify }`: the native fields (none for true), and false
 * when the server's certificate is not to be checked.
 */
function parseRedisTls (tls) {
  if (tls === undefined || tls === null || tls === false) return undefined
  if (tls === true) return { fields: {}, verify: true }
  if (!isObject(tls)) throw argType('options.redis.tls', 'true or an object with ca, cert and key', tls)
  const fields = { redisTlsCa: pemField(tls, 'ca'), redisTlsCert: pemField(tls, 'cert'), redisTlsKey: pemField(tls, 'key') }
  if ((fields.redisTlsCert === undefined) !== (fields.redisTlsKey === undefined)) {
    const [given, missing] = fields.redisTlsCert === undefined ? ['key', 'cert'] : ['cert', 'key']
    const err = new TypeError(`The "options.redis.tls" argument must have both cert and key, or neither: it has ${given} but no ${missing}`)
    err.code = 'ERR_INVALID_ARG_TYPE'
    throw err
  }
  return { fields, verify: optBoolean(tls, 'rejectUnauthorized', true, 'options.redis.tls') }
}

/**
 * `url` over TLS; `verify` false: without checking the server's certificate (the `#insecure` of a `rediss://` URL,
 * which a URL may also carry itself).
 */
function overTls (url, verify) {
  const secure = url.replace(/^redis:/, 'rediss:')
  return verify || secure.includes('#') ? secure : `${secure}#insecure`
}

/** True when `redis` names a server itself (`url`, `REDIS_URL`, `host`, `hostname` or `port`). */
function namesANode (redis) {
  return ['url', 'REDIS_URL', 'host', 'hostname', 'port'].some((k) => redis[k] !== undefined && redis[k] !== null)
}

/**
 * A warning when `redis` (an object) names no server, so that Redis at 127.0.0.1:6379 is used: the original README's
 * `{ REDIS_URL: process.env.REDISTOGO_URL }` with the variable not set, or `{}`. Not refused: that example must keep
 * working on a developer's machine. Undefined when it names one (a Sentinel or a cluster's nodes too).
 */
function noServerWarning (redis) {
  if (namesANode(redis) || redis.sentinel || (Array.isArray(redis.cluster) && redis.cluster.length > 0)) return undefined
  const given = ['REDIS_URL', 'url', 'hostname', 'host', 'port'].find((k) => k in redis)
  const what = given === undefined
    ? 'options.redis names no server (no url, REDIS_URL, host or port)'
    : `options.redis.${given} is ${redis[given]} (an environment variable that is not set?)`
  return `cf-invalidation-tracker: ${what}, so Redis at localhost:6379 is used`
}

/**
 * `redis.cluster`: true (the server `redis` names is a node of a Redis Cluster), or the URLs of nodes to learn the
 * cluster from (with the one `redis` names, if any). Returns undefined for no cluster, else the URLs (maybe none).
 */
function parseRedisCluster (redis) {
  const { cluster } = redis
  if (cluster === undefined || cluster === null || cluster === false) return undefined
  if (cluster === true) return []
  return redisUrls(cluster, 'options.redis.cluster', 'true or an array of redis:// URLs of its nodes')
}

/** `user:password@` for `redis.username` (an ACL user; none: `default`) and `redis.password`, or nothing. */
function passwordAuth (redis) {
  const user = redis.username ? encodeURIComponent(redis.username) : ''
  const password = redis.password ? `:${encodeURIComponent(redis.password)}` : ''
  return user || password ? `${user}${password}@` : ''
}

/**
 * `url` with `redis.username` and `redis.password` in it, unless it has credentials of its own; a URL that names a
 * user without a password (`redis://app@host`) gets `redis.password` as that user's.
 */
function withPassword (url, redis) {
  const [, scheme, userinfo, rest] = url.match(/^(rediss?:\/\/)(?:([^/]*)@)?(.*)$/s)
  if (userinfo === undefined) return `${scheme}${passwordAuth(redis)}${rest}`
  if (!userinfo.includes(':') && redis.password) return `${scheme}${userinfo}:${encodeURIComponent(redis.password)}@${rest}`
  return url
}

/** A non-empty array of redis:// or rediss:// URLs. */
function redisUrls (urls, name, expected) {
  if (!Array.isArray(urls) || urls.length === 0) throw argType(name, expected, urls)
  return urls.map((url, i) => {
    if (typeof url !== 'string') throw argType(`${name}[${i}]`, 'a redis:// or rediss:// URL', url)
    if (!/^rediss?:\/\/./.test(url)) throw argValue(`${name}[${i}]`, 'must be a redis:// or rediss:// URL', url)
    return url
  })
}

/**
 * `redis.sentinel`: `{ name, nodes, db }`, the master the Sentinels at `nodes` (URLs) know as `name`, and its database
 * (default 0); `redis.password` is the master's. Returns undefined for none.
 */
function parseRedisSentinel (redis) {
  const { sentinel } = redis
  if (sentinel === undefined || sentinel === null || sentinel === false) return undefined
  const where = 'options.redis.sentinel'
  if (!isObject(sentinel)) throw argType(where, 'an object with name and nodes', sentinel)
  const name = optString(sentinel, 'name', where)
  if (!name) throw argType(`${where}.name`, "the master's name", sentinel.name)
  const nodes = redisUrls(sentinel.nodes, `${where}.nodes`, 'an array of redis:// URLs of Sentinels')
  nodes.forEach((url, i) => {
    if (/^rediss?:\/\/[^/]*\/\d/.test(url)) throw argValue(`${where}.nodes[${i}]`, "names a database: give the master's as sentinel.db", url)
  })
  const db = sentinel.db ?? 0
  if (!Number.isInteger(db) || db < 0) throw argType(`${where}.db`, 'a database number', sentinel.db)
  if (namesANode(redis)) throw argValue(where, 'names the master: give no url, host or port with it', sentinel)
  if (redis.cluster) throw argValue(where, 'names one master, not a cluster: give sentinel or cluster', sentinel)
  return { name, nodes, db }
}

function parseLogger (logger) {
  if (logger === undefined || logger === null || logger === true) return console
  if (logger === false) return null
  if (!isObject(logger) && typeof logger !== 'function') throw argType('options.logger', 'an object with info, warn and error methods, or false', logger)
  for (const m of ['info', 'warn', 'error']) {
    if (typeof logger[m] !== 'function') throw argType(`options.logger.${m}`, 'a function', logger[m])
  }
  return logger
}

/**
 * Parses user options. Returns `{ native, logger, store }`: the native options, the logger (or null), and the JS
 * store's dispatcher (or undefined).
 */
function parseOptions (options, env = process.env) {
  if (options === undefined || options === null) throw new Error('Missing options')
  if (!isObject(options)) throw argType('options', 'of type object', options)
  const cf = parseCf(options.cf)
  const native = { ...cf }
  let dispatch
  const { store, redis } = options
  if (store !== undefined && store !== null) {
    if (typeof store === 'string') {
      if (store !== 'memory://' && store !== 'memory') throw argValue('options.store', "must be 'memory://' or a store object", store)
      native.store = 'memory'
    } else if (isObject(store) || typeof store === 'function') {
      const missing = missingMethods(store)
      if (missing.length) {
        throw argType('options.store', `a store with ${missing.map((m) => `'${m}'`).join(', ')} (missing)`, store)
      }
      native.store = 'js'
      native.storeMethods = optionalMethods(store)
      native.storeId = storeId(store)
      dispatch = dispatcher(store)
    } else {
      throw argType('options.store', "'memory://' or a store object", store)
    }
  } else if (redis !== undefined && redis !== null && redis !== false) {
    native.store = 'redis'
    native.redisUrl = redisUrl(redis, env)
    if (isObject(redis)) {
      native.redisPrefix = optString(redis, 'prefix', 'options.redis')
      const sentinel = parseRedisSentinel(redis)
      if (sentinel !== undefined) {
        // The master's scheme (TLS when the Sentinels are reached over TLS), credentials and database.
        const scheme = sentinel.nodes.some((url) => url.startsWith('rediss:')) ? 'rediss' : 'redis'
        const unverified = sentinel.nodes.some((url) => url.endsWith('#insecure')) ? '#insecure' : ''
        native.redisUrl = `${scheme}://${passwordAuth(redis)}sentinel-master/${sentinel.db}${unverified}`
        native.redisSentinelName = sentinel.name
        native.redisSentinelNodes = sentinel.nodes
      }
      const nodes = parseRedisCluster(redis)
      if (nodes !== undefined) {
        native.redisCluster = true
        // redis.password is every node's, unless a URL has credentials of its own.
        native.redisUrl = withPassword(native.redisUrl, redis)
        if (nodes.length > 0) {
          const given = nodes.map((url) => withPassword(url, redis))
          if (!namesANode(redis)) native.redisUrl = given.shift()
          native.redisClusterNodes = given
        }
      }
      const tls = parseRedisTls(redis.tls)
      if (tls !== undefined) {
        const secure = (url) => overTls(url, tls.verify)
        native.redisUrl = secure(native.redisUrl)
        if (native.redisClusterNodes) native.redisClusterNodes = native.redisClusterNodes.map(secure)
        if (native.redisSentinelNodes) native.redisSentinelNodes = native.redisSentinelNodes.map(secure)
        for (const [k, v] of Object.entries(tls.fields)) if (v !== undefined) native[k] = v
      }
    }
    if (native.redisPrefix === '') throw argValue('options.redis.prefix', 'must not be empty', '')
  } else {
    throw new Error('Options must contain a store')
  }

  native.batchSize = optInt(options, 'batchSize', 1, 3000)
  native.maxPaths = optInt(options, 'maxPaths', 1, UINT32_MAX)
  native.maxTrackedUrls = optInt(options, 'maxTrackedUrls', 1, UINT32_MAX)
  native.sendTimeoutMs = optInt(options, 'sendTimeoutMs', 1, UINT32_MAX)
  native.pollIntervalMs = optInt(options, 'pollIntervalMs', 1, UINT32_MAX)
  native.leaseMs = optInt(options, 'leaseMs', 1, UINT32_MAX)
  native.flushIntervalMs = optInt(options, 'flushIntervalMs', 1, 60000)
  native.storeTimeoutMs = optInt(options, 'storeTimeoutMs', 1, UINT32_MAX)
  native.bufferCapacity = optInt(options, 'bufferCapacity', 1, UINT32_MAX)
  const qs = options.queryStrings
  if (qs !== undefined && qs !== null) {
    if (typeof qs !== 'string') throw argType('options.queryStrings', "'keep', 'strip' or 'wildcard'", qs)
    if (!['keep', 'strip', 'wildcard'].includes(qs)) throw argValue('options.queryStrings', "must be 'keep', 'strip' or 'wildcard'", qs)
    native.queryStrings = qs
  }
  const index = options.indexDocument
  if (index !== undefined && index !== null) {
    if (typeof index !== 'string') throw argType('options.indexDocument', 'of type string', index)
    if (!/^[^/?#*]+$/.test(index)) throw argValue('options.indexDocument', "must be a file name such as 'index.html'", index)
    native.indexDocument = index
  }
  // Internal (invalidateS3Event): a replayed event gets the same CallerReferences, so it is not billed twice.
  if (options._claimName !== undefined) {
    if (typeof options._claimName !== 'string' || native.store !== 'memory') throw argType('options._claimName', 'a string, with the memory store', options._claimName)
    native.claimName = options._claimName
  }
  const warnings = [...unknownOptions(options, 'options'), ...unknownOptions(options.cf, 'options.cf')]
  if (native.store === 'redis' && isObject(redis)) {
    const noServer = noServerWarning(redis)
    if (noServer !== undefined) warnings.push(noServer)
    warnings.push(...unknownOptions(redis, 'options.redis'))
    for (const part of ['tls', 'sentinel']) {
      if (isObject(redis[part])) warnings.push(...unknownOptions(redis[part], `options.redis.${part}`))
    }
  }
  return { native, logger: parseLogger(options.logger), dispatch, warnings }
}

module.exports = {
  parseOptions, redisUrl, optBoolean, unknownOptions, squash, knownOnly, KNOWN_OPTIONS, MIDDLEWARE_OPTIONS, MISSING_CF, MAX_URL_LENGTH
}
