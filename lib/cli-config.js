'use strict'

// The command line's configuration: flags and environment variables into a command and the tracker's options.
// Pure: no I/O, nothing is created.

const { parseArgs } = require('node:util')

/** The distribution id used by commands that never send (list, track, untrack, distributions, dry runs). */
const NO_DIST = 'NONE'

const HELP = `Usage: cf-invalidation-tracker <command> [options]

Commands:
  send                     Invalidate every tracked URL on CloudFront, then forget them
      --dry-run            Print the batches a send would make; send nothing, forget nothing
      --wait               Wait until CloudFront has completed the invalidations
      --timeout <seconds>  Give up after that long (default 900); what was not sent stays tracked
  status <id>              Print the status of invalidation <id> (InProgress, Completed)
  list                     Print every tracked URL, one per line
  track <url...>           Track URLs ('-' reads them from stdin, one per line)
      --ttl <seconds>      Stop tracking them after that many seconds
  untrack <url...>         Stop tracking URLs ('-' reads them from stdin)
  distributions            List the account's distributions: id, domain, status, origins
      --origin <bucket>    Only those whose origin is that S3 bucket

Options:
  --dist <id>              CloudFront distribution id            [CF_DIST]
  --redis <url>            Redis URL of the URL store            [REDIS_URL, REDISTOGO_URL]
  --prefix <prefix>        Redis key prefix (default: cfit)
  --redis-cluster          The Redis URL is a node of a Redis Cluster  [REDIS_CLUSTER=1]
  --redis-sentinel <name>  The store is the master Redis Sentinel knows as <name>; the Redis URL is
                           then the Sentinels' (comma-separated; a /<db> on them is the master's),
                           REDIS_PASSWORD the master's password  [REDIS_SENTINEL]
  --redis-ca <file>        PEM authorities a rediss:// Redis is checked against,
                           instead of the public ones            [REDIS_TLS_CA_FILE]
  --redis-cert <file>      PEM client certificate for Redis (with --redis-key)  [REDIS_TLS_CERT_FILE]
  --redis-key <file>       PEM private key of that certificate   [REDIS_TLS_KEY_FILE]
  --redis-insecure         TLS without checking Redis's certificate (Heroku Redis)  [REDIS_TLS_INSECURE=1]
  --endpoint <url>         CloudFront endpoint URL               [AWS_ENDPOINT_URL_CLOUDFRONT, AWS_ENDPOINT_URL]
  --region <region>        Signing region                        [AWS_REGION]
  --batch-size <n>         Paths per invalidation request (1-3000, default 1000)
  --max-paths <n>          Most paths one send may bill; beyond, paths are collapsed into wildcards
  --query-strings <mode>   keep, strip or wildcard (default: keep)
  --json                   Print JSON on stdout (send: the report)
  -h, --help               Print this help
  -v, --version            Print the version

Credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE,
SSO, instance and container roles), or from AWS_ACCESS_KEY and AWS_SECRET_KEY, the original package's
variables, which win when both are set.
Exit status: 0 on success, 1 when the work failed, 2 on a usage or configuration error.
`

const OPTIONS = {
  dist: { type: 'string' },
  redis: { type: 'string' },
  prefix: { type: 'string' },
  'redis-cluster': { type: 'boolean' },
  'redis-sentinel': { type: 'string' },
  'redis-ca': { type: 'string' },
  'redis-cert': { type: 'string' },
  'redis-key': { type: 'string' },
  'redis-insecure': { type: 'boolean' },
  endpoint: { type: 'string' },
  region: { type: 'string' },
  'batch-size': { type: 'string' },
  'max-paths': { type: 'string' },
  'query-strings': { type: 'string' },
  json: { type: 'boolean' },
  'dry-run': { type: 'boolean' },
  wait: { type: 'boolean' },
  timeout: { type: 'string' },
  ttl: { type: 'string' },
  origin: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'v' }
}

/** Which commands take which command-specific flags, the number of operands, and what they need. */
const COMMANDS = {
  send: { flags: ['dry-run', 'wait', 'timeout'], operands: [0, 0], store: true },
  status: { flags: [], operands: [1, 1], dist: true, usage: 'status <id>' },
  list: { flags: [], operands: [0, 0], store: true },
  track: { flags: ['ttl'], operands: [1, Infinity], store: true, usage: 'track <url...>' },
  untrack: { flags: [], operands: [1, Infinity], store: true, usage: 'untrack <url...>' },
  distributions: { flags: ['origin'], operands: [0, 0] }
}
const COMMAND_FLAGS = new Set(Object.values(COMMANDS).flatMap((c) => c.flags))

/** A usage or configuration error: the command line exits with status 2. */
class UsageError extends Error {
  constructor (message) {
    super(message)
    this.name = 'UsageError'
    this.code = 'ERR_CFIT_USAGE'
    this.exitCode = 2
  }
}

function nonEmpty (v) {
  return typeof v === 'string' && v.trim() !== '' ? v.trim() : undefined
}

/** A yes/no environment variable: 1, true or yes; 0, false, no or empty; anything else is a usage error. */
function envFlag (env, name) {
  const v = (env[name] ?? '').trim().toLowerCase()
  if (['1', 'true', 'yes'].includes(v)) return true
  if (['', '0', 'false', 'no'].includes(v)) return false
  throw new UsageError(`${name} must be 1 or 0, got ${JSON.stringify(env[name])}`)
}

function integer (values, name, min, max) {
  const raw = values[name]
  if (raw === undefined) return undefined
  const n = Number(raw)
  if (!/^\d+$/.test(raw.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
    throw new UsageError(`--${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(raw)}`)
  }
  return n
}

/**
 * The tracker's `cf` options from flags and the environment: `dist` from --dist or CF_DIST, the endpoint from
 * --endpoint, AWS_ENDPOINT_URL_CLOUDFRONT or AWS_ENDPOINT_URL, the region from --region (else the SDK reads
 * AWS_REGION), and keys only from the original's AWS_ACCESS_KEY / AWS_SECRET_KEY (else the SDK's default chain).
 */
function cfFromEnv (env, flags = {}) {
  const cf = {}
  const dist = nonEmpty(flags.dist) ?? nonEmpty(env.CF_DIST)
  if (dist) cf.dist = dist
  const endpoint = nonEmpty(flags.endpoint) ?? nonEmpty(env.AWS_ENDPOINT_URL_CLOUDFRONT) ?? nonEmpty(env.AWS_ENDPOINT_URL)
  if (endpoint) cf.endpoint = endpoint
  const region = nonEmpty(flags.region)
  if (region) cf.region = region
  const accessKey = nonEmpty(env.AWS_ACCESS_KEY)
  const secretKey = nonEmpty(env.AWS_SECRET_KEY)
  if (accessKey && secretKey) {
    cf.access_key = accessKey
    cf.secret_key = secretKey
  } else if (accessKey || secretKey) {
    throw new UsageError(`${accessKey ? 'AWS_ACCESS_KEY' : 'AWS_SECRET_KEY'} is set without ${accessKey ? 'AWS_SECRET_KEY' : 'AWS_ACCESS_KEY'}`)
  }
  return cf
}

/** The Redis URL from --redis, REDIS_URL or REDISTOGO_URL (the original's Heroku add-on variable). */
function redisFromEnv (env, flags = {}) {
  return nonEmpty(flags.redis) ?? nonEmpty(env.REDIS_URL) ?? nonEmpty(env.REDISTOGO_URL)
}

/**
 * The files of Redis's TLS certificates, from --redis-ca, --redis-cert and --redis-key or REDIS_TLS_CA_FILE,
 * REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE: `{ ca, cert, key }` (each a path or undefined), or undefined when none
 * is given. Read by the command line (readTlsFiles) into `redis.tls`, whose `rediss://` they ask for.
 */
function redisTlsFiles (env, flags = {}) {
  const files = {
    ca: nonEmpty(flags['redis-ca']) ?? nonEmpty(env.REDIS_TLS_CA_FILE),
    cert: nonEmpty(flags['redis-cert']) ?? nonEmpty(env.REDIS_TLS_CERT_FILE),
    key: nonEmpty(flags['redis-key']) ?? nonEmpty(env.REDIS_TLS_KEY_FILE)
  }
  if (!files.ca && !files.cert && !files.key) return undefined
  if (Boolean(files.cert) !== Boolean(files.key)) {
    throw new UsageError(files.cert ? '--redis-cert needs --redis-key (or REDIS_TLS_KEY_FILE)' : '--redis-key needs --redis-cert (or REDIS_TLS_CERT_FILE)')
  }
  return files
}

/**
 * The master a Sentinel knows as `name`, from the Redis URL: the Sentinels' URLs, comma-separated; a `/<db>` on them
 * is the master's database.
 */
function sentinelOf (name, redisUrl) {
  let db
  const nodes = redisUrl.split(',').map((u) => u.trim()).filter(Boolean).map((url) => {
    const m = /^(rediss?:\/\/[^/]*)\/(\d+)\/?$/.exec(url)
    if (!m) return url
    if (db !== undefined && db !== Number(m[2])) throw new UsageError('the Sentinel URLs name different databases')
    db = Number(m[2])
    return m[1]
  })
  return db === undefined ? { name, nodes } : { name, nodes, db }
}

/**
 * Strings that must never be printed: AWS keys and session tokens (real ones are long; shorter values are not
 * masked, so that a dummy key such as 'test' cannot blank out paths), the passwords of the Redis URLs, and
 * REDIS_PASSWORD when it is used (`sentinel`: a Sentinel's master's).
 */
function secretsOf (env, redisUrl, sentinel) {
  const aws = [env.AWS_SECRET_KEY, env.AWS_ACCESS_KEY, env.AWS_SECRET_ACCESS_KEY, env.AWS_ACCESS_KEY_ID, env.AWS_SESSION_TOKEN]
  const secrets = aws.filter((s) => typeof s === 'string' && s.length >= 8)
  if (sentinel && nonEmpty(env.REDIS_PASSWORD)) secrets.push(env.REDIS_PASSWORD)
  for (const url of (redisUrl ?? '').split(',')) {
    try {
      const { password } = new URL(url.trim())
      if (password) secrets.push(password, decodeURIComponent(password))
    } catch {
      // Not a URL: the tracker refuses it, with a message that redact() still cleans.
    }
  }
  return [...new Set(secrets)].filter((s) => s.length > 0).sort((a, b) => b.length - a.length)
}

/** A function that masks every secret (and any `user:password@` of a URL) in a line of output. */
function redactor (secrets) {
  return (text) => {
    let out = String(text).replace(/(\b[a-z][a-z0-9+.-]*:\/\/)[^\s/@]*@/gi, '$1***@')
    for (const s of secrets) out = out.split(s).join('***')
    return out
  }
}

/**
 * Parses the command line. Returns `{ help }`, `{ version }`, or `{ command, operands, json, dryRun, wait, ttl,
 * origin, options, tlsFiles, redact }` where `options` are the tracker's options (without its logger, and without
 * the certificates of `tlsFiles`, which are files to read). Throws UsageError.
 * @param {string[]} argv the arguments after the script name
 * @param {Record<string, string | undefined>} env
 */
function parseCli (argv, env) {
  let parsed
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true })
  } catch (err) {
    // Node's first line says what is wrong; of its hints, the one for a value that starts with a dash (`--ttl=-1`).
    const lines = err.message.split('\n')
    const dash = lines.find((line) => line.startsWith('To specify an option argument starting with a dash'))
    const reason = lines[0].replace(/\. To specify a positional argument.*$/, '')
    throw new UsageError(`${reason}${dash ? ` ${dash}` : ''} (see --help)`)
  }
  const { values, positionals } = parsed
  if (values.help) return { help: HELP }
  if (values.version) return { version: true }
  const [command, ...operands] = positionals
  if (!command) throw new UsageError('missing command: send, status, list, track, untrack or distributions (see --help)')
  const spec = COMMANDS[command]
  if (!spec) throw new UsageError(`unknown command ${JSON.stringify(command)} (see --help)`)
  for (const flag of COMMAND_FLAGS) {
    if (values[flag] !== undefined && !spec.flags.includes(flag)) {
      throw new UsageError(`--${flag} is not an option of ${command}`)
    }
  }
  const [min, max] = spec.operands
  if (operands.length < min || operands.length > max) {
    throw new UsageError(max === 0 ? `${command} takes no arguments` : `usage: cf-invalidation-tracker ${spec.usage}`)
  }

  const cf = cfFromEnv(env, values)
  const dryRun = values['dry-run'] === true
  if (!cf.dist) {
    if (spec.dist || (command === 'send' && !dryRun)) {
      throw new UsageError('no distribution: set CF_DIST or pass --dist')
    }
    cf.dist = NO_DIST
  }
  const redisUrl = redisFromEnv(env, values)
  const sentinel = spec.store ? nonEmpty(values['redis-sentinel']) ?? nonEmpty(env.REDIS_SENTINEL) : undefined
  const options = { cf }
  let tlsFiles
  if (spec.store) {
    if (!redisUrl) throw new UsageError('no store: set REDIS_URL (or REDISTOGO_URL) or pass --redis')
    // REDISTOGO_URL is the original's: given as its `REDIS_URL` option, so that its user name is dropped as it was.
    const redisToGo = nonEmpty(values.redis) === undefined && nonEmpty(env.REDIS_URL) === undefined
    options.redis = sentinel
      ? { sentinel: sentinelOf(sentinel, redisUrl) }
      : redisToGo ? { REDIS_URL: redisUrl } : { url: redisUrl }
    if (sentinel && nonEmpty(env.REDIS_PASSWORD)) options.redis.password = env.REDIS_PASSWORD
    if (values.prefix !== undefined) options.redis.prefix = values.prefix
    if (values['redis-cluster'] === true || envFlag(env, 'REDIS_CLUSTER')) options.redis.cluster = true
    tlsFiles = redisTlsFiles(env, values)
    if (values['redis-insecure'] === true || envFlag(env, 'REDIS_TLS_INSECURE')) options.redis.tls = { rejectUnauthorized: false }
  } else {
    options.store = 'memory://'
  }
  const batchSize = integer(values, 'batch-size', 1, 3000)
  if (batchSize !== undefined) options.batchSize = batchSize
  const timeout = integer(values, 'timeout', 1, Math.floor(0xffffffff / 1000))
  if (timeout !== undefined) options.sendTimeoutMs = timeout * 1000
  const maxPaths = integer(values, 'max-paths', 1, 0xffffffff)
  if (maxPaths !== undefined) options.maxPaths = maxPaths
  if (values['query-strings'] !== undefined) {
    if (!['keep', 'strip', 'wildcard'].includes(values['query-strings'])) {
      throw new UsageError(`--query-strings must be keep, strip or wildcard, got ${JSON.stringify(values['query-strings'])}`)
    }
    options.queryStrings = values['query-strings']
  }
  let ttl
  if (values.ttl !== undefined) {
    ttl = Number(values.ttl)
    if (values.ttl.trim() === '' || !Number.isFinite(ttl) || ttl < 0) {
      throw new UsageError(`--ttl must be a number of seconds, got ${JSON.stringify(values.ttl)}`)
    }
  }
  if (values.origin !== undefined && !nonEmpty(values.origin)) throw new UsageError('--origin needs a bucket name')

  return {
    command,
    operands,
    json: values.json === true,
    dryRun,
    wait: values.wait === true,
    ttl,
    origin: nonEmpty(values.origin),
    dist: cf.dist === NO_DIST ? undefined : cf.dist,
    options,
    tlsFiles,
    redact: redactor(secretsOf(env, redisUrl, sentinel))
  }
}

module.exports = { parseCli, cfFromEnv, redisFromEnv, redactor, UsageError, HELP, NO_DIST }
