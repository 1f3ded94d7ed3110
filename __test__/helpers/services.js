'use strict'

// Real services for the tests: a redis-server and a CloudFront-compatible
// server (moto), each started on a free loopback port and stopped after.
// Every process started here is killed when the test process exits.
// `bash scripts/install-test-services.sh` installs both (npm test runs it).

const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')
const { spawn, execFileSync } = require('node:child_process')

const { cloudFrontApi } = require('./moto')

const REPO_ROOT = path.resolve(__dirname, '..', '..')
const HOST = '127.0.0.1'
const REDIS_START_TIMEOUT_MS = 20_000
const MOTO_START_TIMEOUT_MS = 60_000
const STOP_TIMEOUT_MS = 10_000
const REDIS_COMMAND_TIMEOUT_MS = 30_000
const OUTPUT_LIMIT = 64 * 1024
const INSTALL_HINT = 'run `bash scripts/install-test-services.sh` (npm test does it)'

/**
 * Dummy AWS settings for the tracker under test: fixed credentials, a region,
 * and no reading of the developer's own AWS files or instance metadata.
 */
const awsTestEnv = Object.freeze({
  AWS_ACCESS_KEY_ID: 'testing',
  AWS_SECRET_ACCESS_KEY: 'testing',
  AWS_SESSION_TOKEN: 'testing',
  AWS_REGION: 'us-east-1',
  AWS_DEFAULT_REGION: 'us-east-1',
  AWS_EC2_METADATA_DISABLED: 'true',
  AWS_CONFIG_FILE: os.devNull,
  AWS_SHARED_CREDENTIALS_FILE: os.devNull
})

/**
 * Puts `awsTestEnv` into process.env and removes variables that would point
 * the SDK elsewhere (AWS_PROFILE, AWS_ENDPOINT_URL*). Returns a function that
 * restores the previous environment.
 */
function useAwsTestEnv () {
  const saved = { ...process.env }
  for (const name of Object.keys(process.env)) {
    if (name === 'AWS_PROFILE' || name.startsWith('AWS_ENDPOINT_URL')) delete process.env[name]
  }
  Object.assign(process.env, awsTestEnv)
  return () => {
    for (const name of Object.keys(process.env)) {
      if (!(name in saved)) delete process.env[name]
    }
    Object.assign(process.env, saved)
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// ---------------------------------------------------------------------------
// Processes

const liveServices = new Set()
const tempDirs = new Set()

function killEverythingNow () {
  for (const service of liveServices) {
    try {
      service.child.kill('SIGKILL')
    } catch {
      // Already gone.
    }
  }
  liveServices.clear()
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true })
  tempDirs.clear()
}

process.on('exit', killEverythingNow)
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(signal, () => {
    killEverythingNow()
    // Keep the signal's usual effect unless someone else handles it.
    if (process.listenerCount(signal) === 0) process.kill(process.pid, signal)
  })
}

const portsHandedOut = new Set()

/** A TCP port on 127.0.0.1 that was free a moment ago (never the same twice). */
async function freePort () {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = await new Promise((resolve, reject) => {
      const server = net.createServer()
      server.unref()
      server.on('error', reject)
      server.listen(0, HOST, () => {
        const { port } = server.address()
        server.close(() => resolve(port))
      })
    })
    if (!portsHandedOut.has(port)) {
      portsHandedOut.add(port)
      return port
    }
  }
  throw new Error('freePort: no new free port found')
}

// Spawns a long-running server process. It does not keep the test process
// alive on its own, and it is killed when the test process exits.
function spawnService (name, command, args, options = {}) {
  const child = spawn(command, args, {
    cwd: options.cwd,
    env: options.env ?? process.env,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: false
  })
  let output = ''
  const keep = (chunk) => {
    output += chunk.toString('utf8')
    if (output.length > OUTPUT_LIMIT) output = output.slice(-OUTPUT_LIMIT)
  }
  child.stdout.on('data', keep)
  child.stderr.on('data', keep)

  const service = {
    name,
    child,
    exited: false,
    exitCode: null,
    exitSignal: null,
    spawnError: null,
    output: () => output,
    failure (what) {
      const cause = service.spawnError
      const hint = cause?.code === 'ENOENT' ? ` (${command} not found: ${INSTALL_HINT})` : ''
      const status = service.exited ? `, exit code ${service.exitCode}, signal ${service.exitSignal}` : ''
      const tail = output.trim() ? `\n--- ${name} output ---\n${output.trim().slice(-4000)}` : ''
      return new Error(`${name} ${what}${hint}${status}${tail}`, { cause })
    }
  }
  service.exitPromise = new Promise((resolve) => {
    const done = (code, signal) => {
      if (service.exited) return
      service.exited = true
      service.exitCode = code
      service.exitSignal = signal
      liveServices.delete(service)
      resolve()
    }
    child.on('exit', done)
    child.on('error', (error) => {
      service.spawnError = error
      if (child.pid === undefined) done(null, null)
    })
  })
  liveServices.add(service)
  child.unref()
  child.stdout.unref()
  child.stderr.unref()
  return service
}

// Resolves true once `promise` settles, or false after `ms`; the timer is
// cleared either way, and keeps the test process alive meanwhile.
async function settlesWithin (promise, ms) {
  let timer
  const timeout = new Promise((resolve) => { timer = setTimeout(resolve, ms, false) })
  try {
    return await Promise.race([promise.then(() => true), timeout])
  } finally {
    clearTimeout(timer)
  }
}

// Stops a service with `signal`, then SIGKILL if it lingers.
async function stopService (service, { signal = 'SIGTERM', timeoutMs = STOP_TIMEOUT_MS } = {}) {
  if (service.exited) return
  service.child.kill(signal)
  if (await settlesWithin(service.exitPromise, timeoutMs)) return
  service.child.kill('SIGKILL')
  if (!(await settlesWithin(service.exitPromise, STOP_TIMEOUT_MS))) {
    throw service.failure('did not stop after SIGKILL')
  }
}

// ---------------------------------------------------------------------------
// A minimal RESP2 client: enough to look at what Redis really holds.

/** An error reply from Redis (the text after '-'). */
class RedisReplyError extends Error {
  constructor (message) {
    super(message)
    this.name = 'RedisReplyError'
    this.code = message.split(' ', 1)[0]
  }
}

function encodeCommand (args) {
  const parts = [Buffer.from(`*${args.length}\r\n`)]
  for (const arg of args) {
    const bytes = Buffer.isBuffer(arg) ? arg : Buffer.from(String(arg), 'utf8')
    parts.push(Buffer.from(`$${bytes.length}\r\n`), bytes, Buffer.from('\r\n'))
  }
  return Buffer.concat(parts)
}

// Parses one reply at `offset`: { value, offset } or null when incomplete.
function parseReply (buffer, offset) {
  const lineEnd = buffer.indexOf('\r\n', offset)
  if (lineEnd === -1) return null
  const type = String.fromCharCode(buffer[offset])
  const line = buffer.toString('utf8', offset + 1, lineEnd)
  const next = lineEnd + 2
  switch (type) {
    case '+':
      return { value: line, offset: next }
    case '-':
      return { value: new RedisReplyError(line), offset: next }
    case ':': {
      const n = Number(line)
      return { value: Number.isSafeInteger(n) ? n : BigInt(line), offset: next }
    }
    case '$': {
      const length = Number(line)
      if (length < 0) return { value: null, offset: next }
      if (buffer.length < next + length + 2) return null
      return { value: buffer.toString('utf8', next, next + length), offset: next + length + 2 }
    }
    case '*': {
      const count = Number(line)
      if (count < 0) return { value: null, offset: next }
      const items = []
      let at = next
      for (let i = 0; i < count; i++) {
        const item = parseReply(buffer, at)
        if (item === null) return null
        items.push(item.value)
        at = item.offset
      }
      return { value: items, offset: at }
    }
    default:
      throw new Error(`RESP: unexpected reply type ${JSON.stringify(type)}`)
  }
}

/**
 * A raw Redis client on `port`: `command(...args)` resolves with the reply
 * (string, number, null, array; an error reply rejects with RedisReplyError).
 * It connects on first use and again after the connection drops, and
 * authenticates with `password` when given.
 */
function redisClient (port, { password } = {}) {
  let socket = null
  let buffer = Buffer.alloc(0)
  let pending = []

  function failAll (error) {
    const waiting = pending
    pending = []
    for (const { reject, timer } of waiting) {
      clearTimeout(timer)
      reject(error)
    }
  }

  function connect () {
    const s = net.createConnection({ host: HOST, port })
    s.setNoDelay(true)
    s.on('data', (chunk) => {
      buffer = buffer.length ? Buffer.concat([buffer, chunk]) : chunk
      let offset = 0
      try {
        for (;;) {
          const reply = parseReply(buffer, offset)
          if (reply === null) break
          offset = reply.offset
          const waiter = pending.shift()
          if (!waiter) throw new Error('RESP: reply without a command')
          clearTimeout(waiter.timer)
          if (reply.value instanceof RedisReplyError) waiter.reject(reply.value)
          else waiter.resolve(reply.value)
        }
      } catch (error) {
        s.destroy(error)
        return
      }
      buffer = buffer.subarray(offset)
      if (pending.length === 0) s.unref()
    })
    const drop = (error) => {
      if (socket !== s) return
      socket = null
      buffer = Buffer.alloc(0)
      failAll(error ?? new Error(`Redis connection to ${HOST}:${port} closed`))
    }
    s.on('error', drop)
    s.on('close', () => drop())
    if (password !== undefined) {
      // AUTH first; a refusal fails the commands queued behind it.
      const timer = setTimeout(() => s.destroy(new Error('Redis AUTH timed out')), REDIS_COMMAND_TIMEOUT_MS)
      pending.push({ resolve () {}, reject: (error) => s.destroy(error), timer })
      s.write(encodeCommand(['AUTH', password]))
    }
    return s
  }

  function command (...args) {
    if (args.length === 0) return Promise.reject(new TypeError('command: no arguments'))
    if (!socket) socket = connect()
    const s = socket
    s.ref()
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        s.destroy(new Error(`Redis command ${args[0]} timed out after ${REDIS_COMMAND_TIMEOUT_MS} ms`))
      }, REDIS_COMMAND_TIMEOUT_MS)
      pending.push({ resolve, reject, timer })
      s.write(encodeCommand(args))
    })
  }

  function close () {
    if (!socket) return
    const s = socket
    socket = null
    buffer = Buffer.alloc(0)
    failAll(new Error('Redis client closed'))
    s.destroy()
  }

  return { command, close }
}

// ---------------------------------------------------------------------------
// redis-server

async function waitForRedis (service, port, password) {
  const client = redisClient(port, { password })
  const deadline = Date.now() + REDIS_START_TIMEOUT_MS
  try {
    while (Date.now() < deadline) {
      if (service.exited) throw service.failure('exited before answering PING')
      try {
        if ((await client.command('PING')) === 'PONG') return
      } catch {
        // Not listening yet.
      }
      client.close()
      await sleep(50)
    }
    throw service.failure(`did not answer PING within ${REDIS_START_TIMEOUT_MS} ms`)
  } finally {
    client.close()
  }
}

// ---------------------------------------------------------------------------
// TLS certificates (openssl)

// openssl's own settings for the certificates below, so that no system openssl.cnf is read.
const OPENSSL_CONFIG = `[req]
distinguished_name = dn
[dn]
[authority]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
subjectAltName = IP:127.0.0.1
# clientAuth too: the nodes of a cluster over TLS present it to each other
extendedKeyUsage = serverAuth, clientAuth
[client]
basicConstraints = critical, CA:FALSE
extendedKeyUsage = clientAuth
`

let certificates = null

/**
 * Test certificates, made with openssl once per process (P-256 keys, valid two days): an authority `ca`, the
 * certificate of a server at 127.0.0.1 it signed, a client certificate it signed (`cert`, `key`), and `otherCa`, an
 * authority that signed neither. PEM strings; `files` has the paths of each, for redis-server and the command line.
 */
function tlsCertificates () {
  if (certificates) return certificates
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cf-invalidation-tracker-tls-'))
  tempDirs.add(dir)
  const file = (name) => path.join(dir, name)
  fs.writeFileSync(file('openssl.cnf'), OPENSSL_CONFIG)
  const openssl = (...args) => {
    try {
      execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, OPENSSL_CONF: file('openssl.cnf') } })
    } catch (error) {
      const hint = error.code === 'ENOENT' ? ` (openssl not found: ${INSTALL_HINT})` : ''
      throw new Error(`openssl ${args[0]} failed${hint}: ${error.stderr ?? error.message}`)
    }
  }
  const key = (name) => openssl('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', `${name}.key`)
  const authority = (name) => {
    key(name)
    openssl('req', '-x509', '-new', '-key', `${name}.key`, '-subj', `/CN=cf-invalidation-tracker test ${name}`,
      '-days', '2', '-config', 'openssl.cnf', '-extensions', 'authority', '-out', `${name}.crt`)
  }
  const signed = (name) => {
    key(name)
    openssl('req', '-new', '-key', `${name}.key`, '-subj', `/CN=${name}`, '-config', 'openssl.cnf', '-out', `${name}.csr`)
    openssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2',
      '-extfile', 'openssl.cnf', '-extensions', name, '-out', `${name}.crt`)
  }
  authority('ca')
  authority('other-ca')
  signed('server')
  signed('client')
  const files = {
    ca: file('ca.crt'),
    otherCa: file('other-ca.crt'),
    serverCert: file('server.crt'),
    serverKey: file('server.key'),
    cert: file('client.crt'),
    key: file('client.key')
  }
  const read = (f) => fs.readFileSync(f, 'utf8')
  certificates = { ca: read(files.ca), otherCa: read(files.otherCa), cert: read(files.cert), key: read(files.key), files }
  return certificates
}

async function launchRedis (port, dir, extraArgs, password) {
  fs.mkdirSync(dir, { recursive: true })
  const args = [
    '--port', String(port),
    '--bind', HOST,
    '--save', '',
    '--appendonly', 'no',
    '--dir', dir,
    '--daemonize', 'no',
    '--logfile', '',
    ...extraArgs
  ]
  const service = spawnService('redis-server', process.env.REDIS_SERVER || 'redis-server', args)
  try {
    await waitForRedis(service, port, password)
  } catch (error) {
    await stopService(service, { signal: 'SIGKILL' })
    throw error
  }
  return service
}

/**
 * Starts a redis-server on a free loopback port, without persistence, and
 * resolves once it answers PING.
 * With `tls`, it also listens for TLS on a second loopback port (`tlsPort`,
 * `tlsUrl`), with the server certificate of tlsCertificates();
 * `tls.authClients` is redis-server's tls-auth-clients: 'yes' (a client
 * certificate signed by its `ca` is required), 'optional' or 'no' (default).
 * The plain port stays open for the test's own client. With `password`, it
 * requires it (and its test client and a replica's link use it); `url`
 * has no credentials.
 * @param {{ args?: string[], tls?: { authClients?: 'yes' | 'optional' | 'no' }, password?: string }} [options]
 *   extra redis-server arguments, TLS, a password
 * @returns {Promise<{ port: number, host: string, url: string, tlsPort?: number, tlsUrl?: string,
 *   client: ReturnType<typeof redisClient>,
 *   stop(options?: { signal?: string }): Promise<void>, restart(options?: { signal?: string }): Promise<void>,
 *   kill(): Promise<void>, pid: number, logs(): string }>}
 */
async function startRedis ({ args = [], tls, password } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cf-invalidation-tracker-redis-'))
  tempDirs.add(dir)
  let tlsPort
  if (tls) {
    const { files } = tlsCertificates()
    tlsPort = await freePort()
    args = [...args, '--tls-port', String(tlsPort), '--tls-cert-file', files.serverCert, '--tls-key-file',
      files.serverKey, '--tls-ca-cert-file', files.ca, '--tls-auth-clients', tls.authClients ?? 'no']
  }
  if (password !== undefined) args = [...args, '--requirepass', password, '--masterauth', password]
  let port
  let service
  let lastError
  for (let attempt = 0; attempt < 3 && !service; attempt++) {
    port = await freePort()
    try {
      service = await launchRedis(port, dir, args, password)
    } catch (error) {
      lastError = error
      // Only a port taken in between is worth another port.
      if (!/Address already in use/i.test(error.message)) break
    }
  }
  if (!service) {
    fs.rmSync(dir, { recursive: true, force: true })
    tempDirs.delete(dir)
    throw lastError
  }

  const client = redisClient(port, { password })

  async function stopProcess (options) {
    client.close()
    await stopService(service, options)
  }

  return {
    port,
    host: HOST,
    url: `redis://${HOST}:${port}`,
    ...(tls && { tlsPort, tlsUrl: `rediss://${HOST}:${tlsPort}` }),
    client,
    get pid () { return service.child.pid },
    logs: () => service.output(),
    /** Stops the server (SIGTERM by default) and removes its directory. */
    async stop (options) {
      await stopProcess(options)
      fs.rmSync(dir, { recursive: true, force: true })
      tempDirs.delete(dir)
    },
    /** Kills the server at once (SIGKILL), as a crash would. */
    kill: () => stopProcess({ signal: 'SIGKILL' }),
    /** Stops the server and starts a new, empty one on the same port. */
    async restart (options) {
      await stopProcess(options)
      tempDirs.add(dir)
      let error
      // The port was just released; retry briefly should anything hold it.
      for (let attempt = 0; attempt < 5; attempt++) {
        try {
          service = await launchRedis(port, dir, args, password)
          return
        } catch (e) {
          error = e
          await sleep(200)
        }
      }
      throw error
    }
  }
}

// ---------------------------------------------------------------------------
// Redis Cluster

const SLOTS = 16384

/**
 * Starts a Redis Cluster of `masters` redis-servers on free loopback ports (replicas are added by `addReplica`),
 * each serving an equal range of the 16,384 slots, and resolves once every node reports the cluster ok and knows
 * every slot's node.
 * With `tls`, the nodes also listen for TLS (see startRedis) and speak TLS among themselves; the cluster then tells
 * clients the TLS ports (`tlsUrls`). With `password`, every node requires it.
 * `nodeFor(key)` is the node that serves a key (its raw client reads what the tracker wrote there).
 * @param {{ masters?: number }} [options]
 */
async function startRedisCluster ({ masters = 3, tls = false, password } = {}) {
  const args = ['--cluster-enabled', 'yes', '--cluster-node-timeout', '3000', '--cluster-config-file', 'nodes.conf']
  if (tls) args.push('--tls-cluster', 'yes')
  // The cluster bus on a port of its own (else the client port + 10000, which nobody checked was free).
  const busPorts = []
  for (let i = 0; i < masters; i++) busPorts.push(await freePort())
  const startNode = (bus) => startRedis({ args: [...args, '--cluster-port', String(bus)], tls: tls ? {} : undefined, password })
  const nodes = await Promise.all(busPorts.map(startNode))
  const replicas = []
  const stop = () => Promise.allSettled([...nodes, ...replicas].map((n) => n.stop()))
  try {
    await Promise.all(nodes.map((node, i) => {
      const first = Math.floor((SLOTS * i) / masters)
      const last = Math.floor((SLOTS * (i + 1)) / masters) - 1
      return node.client.command('CLUSTER', 'ADDSLOTSRANGE', first, last)
    }))
    const first = nodes[0]
    for (const node of nodes.slice(1)) await node.client.command('CLUSTER', 'MEET', HOST, tls ? first.tlsPort : first.port, busPorts[0])
    const deadline = Date.now() + REDIS_START_TIMEOUT_MS
    for (;;) {
      const states = await Promise.all(nodes.map(async (n) => {
        const info = await n.client.command('CLUSTER', 'INFO')
        const slots = await n.client.command('CLUSTER', 'SLOTS')
        return /cluster_state:ok/.test(info) && slots.length === masters
      }))
      if (states.every(Boolean)) break
      if (Date.now() > deadline) throw new Error(`the Redis Cluster was not ok within ${REDIS_START_TIMEOUT_MS} ms`)
      await sleep(100)
    }
  } catch (error) {
    await stop()
    throw error
  }
  const ranges = nodes.map((node, i) => [Math.floor((SLOTS * i) / masters), Math.floor((SLOTS * (i + 1)) / masters) - 1, node])
  return {
    nodes,
    urls: nodes.map((n) => n.url),
    tlsUrls: tls ? nodes.map((n) => n.tlsUrl) : undefined,
    /** The node that serves `key`'s slot. */
    async nodeFor (key) {
      const slot = await nodes[0].client.command('CLUSTER', 'KEYSLOT', key)
      return ranges.find(([first, last]) => slot >= first && slot <= last)[2]
    },
    /** What the node serving prefix `prefix` holds in its set of tracked URLs, in order. */
    async tracked (prefix) {
      const key = `{${prefix}}:urls`
      return (await this.nodeFor(key)).client.command('ZRANGE', key, 0, -1)
    },
    /** A node that does not serve `key`'s slot. */
    async nodeNotFor (key) {
      const serving = await this.nodeFor(key)
      return nodes.find((n) => n !== serving)
    },
    /**
     * Starts a replica of `master` (one of `nodes`) that joins the cluster; resolves with it once it is in sync. It
     * stops with the cluster; `nodes` and `nodeFor` go on naming the masters the cluster started with.
     */
    async addReplica (master) {
      const bus = await freePort()
      const replica = await startNode(bus)
      replicas.push(replica)
      const masterId = await master.client.command('CLUSTER', 'MYID')
      await replica.client.command('CLUSTER', 'MEET', HOST, tls ? master.tlsPort : master.port, busPorts[nodes.indexOf(master)])
      const deadline = Date.now() + REDIS_START_TIMEOUT_MS
      let replicating = false
      for (;;) {
        try {
          if (!replicating && (await replica.client.command('CLUSTER', 'NODES')).includes(masterId)) {
            await replica.client.command('CLUSTER', 'REPLICATE', masterId)
            replicating = true
          }
          if (replicating && /master_link_status:up/.test(await replica.client.command('INFO', 'replication'))) return replica
        } catch {
          // Not known to the cluster yet.
        }
        if (Date.now() > deadline) throw new Error(`the replica was not in sync within ${REDIS_START_TIMEOUT_MS} ms`)
        await sleep(100)
      }
    },
    stop
  }
}

// ---------------------------------------------------------------------------
// Redis Sentinel

/**
 * Starts a master, a replica of it and a Sentinel watching them as `name` (quorum 1, the master deemed down after
 * one second), all on free loopback ports; resolves once the replica is in sync and the Sentinel knows both.
 * `master()` is the server that is master now, by the Sentinel; `failover()` has the Sentinel promote the replica
 * (see there). `writableReplica` lets a test change the replica's data (to make it lack
 * a write, as replication lag would). With `tls`, the servers and the Sentinel also listen for TLS (see startRedis),
 * replicate and are watched over TLS, and the Sentinel names the servers' TLS ports (`tlsUrl`: the Sentinel's).
 * With `password`, the master and its replica require it; with `sentinelPassword`, the Sentinel requires its own
 * (`url` has no credentials).
 * @param {{ name?: string, writableReplica?: boolean, tls?: boolean, password?: string, sentinelPassword?: string }} [options]
 */
async function startRedisSentinel ({ name = 'tracked', writableReplica = false, tls = false, password, sentinelPassword } = {}) {
  const tlsArgs = tls ? ['--tls-replication', 'yes'] : []
  const first = await startRedis({ args: tlsArgs, tls: tls ? {} : undefined, password })
  const port1 = tls ? first.tlsPort : first.port
  const replicaArgs = [...tlsArgs, '--replicaof', HOST, String(port1)]
  if (writableReplica) replicaArgs.push('--replica-read-only', 'no')
  const second = await startRedis({ args: replicaArgs, tls: tls ? {} : undefined, password })
  const servers = [first, second]
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cf-invalidation-tracker-sentinel-'))
  tempDirs.add(dir)
  const port = await freePort()
  const tlsPort = tls ? await freePort() : undefined
  const config = path.join(dir, 'sentinel.conf')
  const { files } = tls ? tlsCertificates() : {}
  fs.writeFileSync(config, [
    `port ${port}`,
    `bind ${HOST}`,
    `dir ${dir}`,
    ...(tls
      ? [`tls-port ${tlsPort}`, `tls-cert-file ${files.serverCert}`, `tls-key-file ${files.serverKey}`,
          `tls-ca-cert-file ${files.ca}`, 'tls-auth-clients no', 'tls-replication yes']
      : []),
    ...(sentinelPassword === undefined ? [] : [`requirepass ${JSON.stringify(sentinelPassword)}`]),
    `sentinel monitor ${name} ${HOST} ${port1} 1`,
    ...(password === undefined ? [] : [`sentinel auth-pass ${name} ${JSON.stringify(password)}`]),
    `sentinel down-after-milliseconds ${name} 1000`,
    `sentinel failover-timeout ${name} 5000`,
    ''
  ].join('\n'))
  const service = spawnService('redis-sentinel', process.env.REDIS_SERVER || 'redis-server', [config, '--sentinel'])
  const client = redisClient(port, { password: sentinelPassword })
  const stop = async () => {
    client.close()
    await Promise.allSettled([stopService(service), ...servers.map((s) => s.stop())])
  }
  const masterPort = async () => Number((await client.command('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', name))[1])
  const portOf = (server) => tls ? server.tlsPort : server.port // the port the Sentinel names
  async function until (what, check) {
    const deadline = Date.now() + REDIS_START_TIMEOUT_MS
    for (;;) {
      if (service.exited) throw service.failure('exited')
      try {
        if (await check()) return
      } catch {
        // Not answering yet.
      }
      if (Date.now() > deadline) throw service.failure(`did not see ${what} within ${REDIS_START_TIMEOUT_MS} ms`)
      await sleep(100)
    }
  }
  try {
    await until('the replica in sync', async () => /master_link_status:up/.test(await second.client.command('INFO', 'replication')))
    await until('the Sentinel knowing the replica', async () => (await client.command('SENTINEL', 'REPLICAS', name)).length === 1)
  } catch (error) {
    await stop()
    throw error
  }
  return {
    name,
    port,
    url: `redis://${HOST}:${port}`,
    ...(tls && { tlsUrl: `rediss://${HOST}:${tlsPort}` }),
    servers,
    /** The server that is master now, by the Sentinel. */
    async master () {
      const p = await masterPort()
      return servers.find((s) => portOf(s) === p)
    },
    /**
     * Has the Sentinel promote the replica; resolves with the new master once the Sentinel names it and the old
     * master has become its replica (until then, the old master still takes writes, which its resync then drops:
     * Redis replicates asynchronously). The old master is told so at once, as the Sentinel would at its next look
     * (up to 10 s later).
     */
    async failover () {
      const before = await this.master()
      await client.command('SENTINEL', 'FAILOVER', name)
      await until('a new master', async () => (await masterPort()) !== portOf(before))
      const after = await this.master()
      await before.client.command('REPLICAOF', HOST, portOf(after))
      await until('the old master a replica', async () => (await before.client.command('ROLE'))[0] === 'slave')
      return after
    },
    stop
  }
}

// ---------------------------------------------------------------------------
// moto_server

/**
 * The moto_server executable: $MOTO_SERVER, else the repository's .venv, else
 * `moto_server` on PATH when there is no .venv.
 */
function motoServerCommand () {
  if (process.env.MOTO_SERVER) return process.env.MOTO_SERVER
  const venv = path.join(REPO_ROOT, '.venv')
  if (fs.existsSync(venv)) return path.join(venv, 'bin', 'moto_server')
  return 'moto_server'
}

async function waitForHttp (service, endpoint) {
  const deadline = Date.now() + MOTO_START_TIMEOUT_MS
  while (Date.now() < deadline) {
    if (service.exited) throw service.failure('exited before answering HTTP')
    try {
      const response = await fetch(`${endpoint}/moto-api/`, { signal: AbortSignal.timeout(2_000) })
      await response.arrayBuffer()
      if (response.status < 500) return
    } catch {
      // Not listening yet.
    }
    await sleep(100)
  }
  throw service.failure(`did not answer HTTP within ${MOTO_START_TIMEOUT_MS} ms`)
}

/**
 * Starts moto on a free loopback port and resolves once it answers HTTP.
 * Besides `port`, `endpoint` and `stop()`, the handle has the CloudFront API
 * methods of `cloudFrontApi` (see ./moto.js): createDistribution,
 * createInvalidation, listInvalidations, getInvalidation, allInvalidatedPaths,
 * reset, request.
 */
async function startMoto () {
  const command = motoServerCommand()
  let lastError
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort()
    const endpoint = `http://${HOST}:${port}`
    const service = spawnService('moto_server', command, ['-H', HOST, '-p', String(port)])
    try {
      await waitForHttp(service, endpoint)
    } catch (error) {
      lastError = error
      const exitedEarly = service.exited
      await stopService(service, { signal: 'SIGKILL' })
      // Exiting early may be a port taken in between: worth another port.
      if (exitedEarly && !service.spawnError) continue
      throw error
    }
    return {
      port,
      endpoint,
      get pid () { return service.child.pid },
      logs: () => service.output(),
      stop: (options) => stopService(service, options),
      ...cloudFrontApi(endpoint)
    }
  }
  throw lastError
}

module.exports = {
  startRedis,
  startRedisCluster,
  startRedisSentinel,
  tlsCertificates,
  startMoto,
  freePort,
  redisClient,
  RedisReplyError,
  awsTestEnv,
  useAwsTestEnv,
  motoServerCommand,
  cloudFrontApi
}
