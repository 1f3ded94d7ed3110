'use strict'

// `npm run bench`: storeUrl throughput against a node-redis baseline, Redis commands per call, Express overhead of
// the middleware, and sendInvalidation of large sets. Prints one markdown table (for the README) with the targets.
//
//   npm run bench                  full run (a few minutes)
//   npm run bench -- --smoke       short run for CI (< 60 s); also BENCH_SMOKE=1
//   npm run bench -- --only=calls,express,instructions,send
//   npm run bench -- --cloudfront=fake   send to the test suite's fake CloudFront instead of bench/cloudfront.js
//   BENCH_CPU_PROF=/tmp/prof npm run bench   profiles every child process (--cpu-prof)
//
// Every server is local (127.0.0.1) and stopped at the end; the process exits 0 unless the benchmark itself crashes.
// A missed target is reported, not enforced.

const os = require('node:os')
const fs = require('node:fs')
const path = require('node:path')
const { fork, spawn, execFileSync } = require('node:child_process')

const autocannon = require('autocannon')
const { startRedis } = require('../__test__/helpers/services')
const { startFakeCloudFront } = require('../__test__/helpers/fake-cloudfront')
const { startCloudFrontStub } = require('./cloudfront')
const {
  zipfRanks,
  catalogPath,
  runChild,
  parseCommandStats,
  summarizeCommands,
  addonBuild
} = require('./lib')

const DIST = 'EBENCH'
const URLS_KEY = '{cfit}:urls'
const BASELINE_KEY = 'bench:baseline'
const URL_SPACE = 100_000

const PARTS = ['calls', 'express', 'instructions', 'send']

function parseArgs (argv, env) {
  const smoke = argv.includes('--smoke') || env.BENCH_SMOKE === '1'
  const onlyArg = argv.find((a) => a.startsWith('--only='))
  const only = new Set(onlyArg ? onlyArg.slice('--only='.length).split(',') : PARTS)
  for (const part of only) {
    if (!PARTS.includes(part)) throw new RangeError(`--only takes ${PARTS.join(', ')}; not ${part}`)
  }
  const cfArg = argv.find((a) => a.startsWith('--cloudfront='))
  const cloudfront = cfArg ? cfArg.slice('--cloudfront='.length) : 'stub'
  if (!['stub', 'fake'].includes(cloudfront)) throw new RangeError('--cloudfront takes stub or fake')
  return { smoke, only, cloudfront }
}

// Calls per run. `depth` is how many 10,000-call chunks may be in flight: 1 awaits every chunk right after issuing
// it (the caller waits on durability every 10,000 calls, so the tracker's flush interval shows); 4 keeps up to four
// chunks in flight (sustained throughput). Sizes aim at 2-5 s per run on a small machine.
const FULL = {
  calls: [
    { workload: 'zipf', depth: 1, tracker: 500_000, baseline: 200_000 },
    { workload: 'zipf', depth: 4, tracker: 2_000_000, baseline: 200_000 },
    // At most the default maxTrackedUrls (1,000,000), so that every URL is stored one by one.
    { workload: 'unique', depth: 1, tracker: 1_000_000, baseline: 200_000 },
    { workload: 'unique', depth: 4, tracker: 1_000_000, baseline: 200_000 }
  ],
  express: { warmupSec: 2, rounds: 15, roundSec: 2, connections: 10 },
  instructions: { warmup: 3000, requests: 3000, connections: 10 },
  send: [100_000, 1_000_000],
  childTimeoutMs: 300_000
}

const SMOKE = {
  calls: [
    { workload: 'zipf', depth: 1, tracker: 50_000, baseline: 30_000 },
    { workload: 'zipf', depth: 4, tracker: 200_000, baseline: 30_000 },
    { workload: 'unique', depth: 1, tracker: 50_000, baseline: 30_000 },
    { workload: 'unique', depth: 4, tracker: 100_000, baseline: 30_000 }
  ],
  express: { warmupSec: 0, rounds: 1, roundSec: 1, connections: 10 },
  instructions: null, // valgrind makes it minutes long
  send: [10_000],
  childTimeoutMs: 60_000
}

const CHUNK = 10_000
const SEND_BATCH_SIZE = 3000
const FILL_MEMBERS_PER_ZADD = 1000
const FILL_ZADDS_IN_FLIGHT = 50

// ---------------------------------------------------------------------------
// storeUrl against node-redis ZADD

async function measureCalls ({ redis, cf, side, workload, n, depth, timeoutMs }) {
  const raw = redis.client
  await raw.command('FLUSHALL')
  const result = await runChild('calls.js', {
    side,
    workload,
    n,
    urlSpace: URL_SPACE,
    redisUrl: redis.url,
    endpoint: cf.endpoint,
    dist: DIST,
    key: BASELINE_KEY,
    chunk: CHUNK,
    depth
  }, {
    timeoutMs,
    onReady: () => raw.command('CONFIG', 'RESETSTAT')
  })
  const commands = summarizeCommands(parseCommandStats(await raw.command('INFO', 'commandstats')))
  const key = side === 'tracker' ? URLS_KEY : BASELINE_KEY
  const stored = await raw.command('ZCARD', key)
  const overflow = side === 'tracker' ? await raw.command('SCARD', '{cfit}:overflow') : 0
  return {
    callsPerSec: result.calls / result.seconds,
    seconds: result.seconds,
    n,
    distinct: result.distinct,
    stored,
    overflow,
    complete: stored === result.distinct && overflow === 0,
    commandsPerMillion: {
      clientSent: (commands.clientSent * 1e6) / n,
      total: (commands.total * 1e6) / n
    }
  }
}

// ---------------------------------------------------------------------------
// Express with and without the middleware

/** Starts bench/server.js with `args`; `wrapper` (e.g. valgrind and its flags) runs it under another program. */
function startServer (args, timeoutMs, wrapper = null, nodeFlags = []) {
  const file = path.join(__dirname, 'server.js')
  const argv = [JSON.stringify(args)]
  const stdio = ['ignore', 'inherit', 'inherit', 'ipc']
  const child = wrapper
    ? spawn(wrapper[0], [...wrapper.slice(1), process.execPath, ...nodeFlags, file, ...argv], { stdio })
    : fork(file, argv, { stdio, execArgv: nodeFlags })
  let exited = false
  const exit = new Promise((resolve) => child.once('exit', () => { exited = true; resolve() }))
  const listening = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the Express server did not start')), timeoutMs)
    child.on('message', (msg) => {
      if (msg.type === 'listening') {
        clearTimeout(timer)
        resolve(msg.port)
      } else if (msg.type === 'error') {
        clearTimeout(timer)
        reject(new Error(msg.message))
      }
    })
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`the Express server exited with code ${code}`))
    })
  })
  return {
    listening,
    /** Stops the server gracefully (SIGKILL after 10 s); resolves with its `{ served, cpuMicros }`, if it said. */
    async stop () {
      if (exited) return undefined
      let stats
      child.on('message', (msg) => { if (msg.type === 'result') stats = msg })
      child.send({ type: 'stop' })
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
      await exit
      clearTimeout(timer)
      return stats
    },
    kill () {
      if (!exited) child.kill('SIGKILL')
    },
    pid: child.pid
  }
}

/**
 * Loads a server for `length` (seconds, or `{ amount }` requests) with the Zipf-ranked catalog paths of `ranks`,
 * from `cursor.next` on (wrapping around), and leaves the cursor where it stopped, for the next load to go on.
 */
async function loadTest (port, length, connections, ranks, cursor = { next: 0 }) {
  const result = await autocannon({
    url: `http://127.0.0.1:${port}`,
    connections,
    ...(typeof length === 'number' ? { duration: length } : length),
    requests: [{
      method: 'GET',
      setupRequest (req) {
        const rank = ranks[cursor.next]
        cursor.next = cursor.next + 1 === ranks.length ? 0 : cursor.next + 1
        return { ...req, path: catalogPath(rank) }
      }
    }]
  })
  return {
    requests: result.requests.total,
    seconds: result.duration,
    errors: result.errors + result.timeouts + result.non2xx
  }
}

/**
 * On a machine of 2 or more cores with `taskset`, the servers (every thread) share the last core and this process
 * (autocannon) and Redis get the others, so that a server's cost is all its own and the servers measured side by
 * side get equal shares of one core. Returns a description, or null when not pinned.
 */
function pinCores (serverPids, otherPids) {
  const cores = os.cpus().length
  if (cores < 2) return null
  const last = cores - 1
  const rest = cores === 2 ? '0' : `0-${cores - 2}`
  try {
    for (const pid of serverPids) execFileSync('taskset', ['-a', '-p', '-c', String(last), String(pid)], { stdio: 'ignore' })
    for (const pid of otherPids) execFileSync('taskset', ['-a', '-p', '-c', rest, String(pid)], { stdio: 'ignore' })
  } catch {
    return null
  }
  return `the servers share core ${last}; autocannon and Redis run on core${cores === 2 ? '' : 's'} ${rest}`
}

/** Lets these processes run on every core again. */
function unpinCores (pids) {
  const all = `0-${os.cpus().length - 1}`
  for (const pid of pids) {
    try {
      execFileSync('taskset', ['-a', '-p', '-c', all, String(pid)], { stdio: 'ignore' })
    } catch {}
  }
}

function median (values) {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

const EXPRESS_SIDES = ['none', 'noop', 'tracker']

/**
 * Express with the middleware against without, side by side: in each round, the three servers (without, with the
 * middleware, with a middleware that only calls next()) are loaded at the same time (one autocannon each) for
 * `roundSec` and share one core, so that whatever else the machine does hits them alike and none of them idles while
 * another is measured; the server that costs more per request serves fewer. Each ratio is the median of its rounds.
 */
async function measureExpress ({ redis, cf, settings, timeoutMs }) {
  const raw = redis.client
  await raw.command('FLUSHALL')
  const common = { redisUrl: redis.url, endpoint: cf.endpoint, dist: DIST }
  const servers = Object.fromEntries(EXPRESS_SIDES.map((side) => [side, startServer({ ...common, middleware: side }, timeoutMs)]))
  try {
    const ports = {}
    for (const side of EXPRESS_SIDES) ports[side] = await servers[side].listening
    const pinned = pinCores(EXPRESS_SIDES.map((side) => servers[side].pid), [process.pid, redis.pid])
    const ranks = zipfRanks(1_000_000, URL_SPACE, { seed: 7 })
    const { warmupSec, rounds, roundSec, connections } = settings
    // Each server goes on through the ranks from round to round, as a server's traffic does, rather than starting
    // them over (which would serve the same few thousand URLs, already in Redis, in every round).
    const cursors = Object.fromEntries(EXPRESS_SIDES.map((side) => [side, { next: 0 }]))
    const all = (seconds) => Promise.all(EXPRESS_SIDES.map((side) => loadTest(ports[side], seconds, connections, ranks, cursors[side])))
    if (warmupSec > 0) await all(warmupSec)
    const rates = { tracker: [], noop: [], none: [] }
    const ratios = { tracker: [], noop: [] }
    let errors = 0
    for (let round = 0; round < rounds; round++) {
      const loads = await all(roundSec)
      const rate = Object.fromEntries(EXPRESS_SIDES.map((side, i) => [side, loads[i].requests / loads[i].seconds]))
      for (const [i, side] of EXPRESS_SIDES.entries()) {
        errors += loads[i].errors
        rates[side].push(rate[side])
      }
      for (const side of ['tracker', 'noop']) ratios[side].push(rate[side] / rate.none)
    }
    const stats = {}
    for (const side of EXPRESS_SIDES) stats[side] = await servers[side].stop()
    const tracked = await raw.command('ZCARD', URLS_KEY)
    // CPU per request served (warm-up included), of the server process, all threads.
    const cpuPerRequest = (side) => stats[side] && stats[side].served > 0 ? stats[side].cpuMicros / stats[side].served : NaN
    const perSide = (f) => Object.fromEntries(EXPRESS_SIDES.map((side) => [side, f(side)]))
    return {
      rate: perSide((side) => median(rates[side])),
      ratio: median(ratios.tracker),
      control: median(ratios.noop),
      ratios,
      pinned,
      errors,
      tracked,
      serverCpuMicros: perSide(cpuPerRequest)
    }
  } finally {
    unpinCores([process.pid, redis.pid])
    await Promise.all(Object.values(servers).map((s) => s.stop().catch(() => s.kill())))
  }
}

// ---------------------------------------------------------------------------
// Express: instructions per request, counted by valgrind

// How much slower a server runs under callgrind, roughly: the tracker's intervals are stretched as much, so that its
// writes gather as many requests as they would at full speed.
const VALGRIND_SLOWDOWN = 50

function hasCallgrind () {
  try {
    execFileSync('valgrind', ['--version'], { stdio: 'ignore' })
    execFileSync('callgrind_control', ['--version'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

/** The instruction count (Ir) a callgrind output file sums up. */
function callgrindTotal (file) {
  const m = /^(?:summary|totals): (\d+)/m.exec(fs.readFileSync(file, 'utf8'))
  if (!m) throw new Error(`no instruction count in ${file}`)
  return Number(m[1])
}

/**
 * Instructions the server's main thread runs per request, with each middleware in turn, under callgrind: after
 * `warmup` requests the counters are zeroed, and after `requests` more they are dumped. Counted instructions do not
 * depend on what else the machine is doing; they are no measure of time, but they show what a request costs.
 */
async function measureInstructions ({ redis, cf, settings, timeoutMs }) {
  const { warmup, requests, connections } = settings
  const ranks = zipfRanks(warmup + requests, URL_SPACE, { seed: 11 })
  const perRequest = {}
  for (const side of EXPRESS_SIDES) {
    await redis.client.command('FLUSHALL')
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cfit-callgrind-'))
    const out = path.join(dir, 'callgrind.out')
    const args = { redisUrl: redis.url, endpoint: cf.endpoint, dist: DIST, middleware: side, slowdown: VALGRIND_SLOWDOWN }
    const server = startServer(args, timeoutMs, ['valgrind', '--tool=callgrind', '--smc-check=all-non-file',
      '--separate-threads=yes', `--callgrind-out-file=${out}`, `--log-file=${path.join(dir, 'valgrind.log')}`],
    // V8 compiles and collects garbage on this thread alone, at points that do not depend on timing
    ['--predictable'])
    try {
      const port = await server.listening
      await loadTest(port, { amount: warmup }, connections, ranks)
      execFileSync('callgrind_control', ['--zero', String(server.pid)], { stdio: 'ignore' })
      const load = await loadTest(port, { amount: requests }, connections, ranks.slice(warmup))
      if (load.errors) throw new Error(`${load.errors} errors/non-2xx under callgrind`)
      execFileSync('callgrind_control', ['--dump', String(server.pid)], { stdio: 'ignore' })
      // The first dump ('.1') of the main thread ('-01').
      const dump = `${out}.1-01`
      if (!fs.existsSync(dump)) throw new Error('callgrind wrote no dump')
      perRequest[side] = callgrindTotal(dump) / load.requests
    } finally {
      await server.stop().catch(() => server.kill())
      fs.rmSync(dir, { recursive: true, force: true })
    }
  }
  return perRequest
}

// ---------------------------------------------------------------------------
// sendInvalidation

const sendPath = (i) => `/catalog/item-${i}.html`

async function fill (raw, size) {
  let inFlight = []
  for (let start = 0; start < size; start += FILL_MEMBERS_PER_ZADD) {
    const args = ['ZADD', URLS_KEY]
    for (let i = start; i < Math.min(size, start + FILL_MEMBERS_PER_ZADD); i++) args.push('+inf', sendPath(i))
    inFlight.push(raw.command(...args))
    if (inFlight.length >= FILL_ZADDS_IN_FLIGHT) {
      await Promise.all(inFlight)
      inFlight = []
    }
  }
  await Promise.all(inFlight)
  const stored = await raw.command('ZCARD', URLS_KEY)
  if (stored !== size) throw new Error(`filling Redis stored ${stored} URLs, not ${size}`)
}

async function measureSend ({ redis, cf, size, timeoutMs }) {
  const raw = redis.client
  await raw.command('FLUSHALL')
  cf.reset()
  await fill(raw, size)
  const result = await runChild('send.js', {
    redisUrl: redis.url,
    endpoint: cf.endpoint,
    dist: DIST,
    batchSize: SEND_BATCH_SIZE
  }, {
    timeoutMs,
    env: { AWS_EC2_METADATA_DISABLED: 'true', AWS_CONFIG_FILE: os.devNull, AWS_SHARED_CREDENTIALS_FILE: os.devNull }
  })
  const received = cf.pathCount ? cf.pathCount(DIST) : cf.pathsReceived(DIST).length
  const left = await raw.command('ZCARD', URLS_KEY)
  const creates = cf.requests.filter((r) => r.op === 'CreateInvalidation')
  const requests = cf.requests.length
  cf.reset()
  return {
    size,
    seconds: result.seconds,
    maxRssMb: (result.maxRssKb * 1024) / 1e6,
    rssPeakAt: result.rssPeakAt,
    // From the start of the send to the first CreateInvalidation (claim, read, plan, save the plan), and from it to
    // the last one (the batches).
    beforeFirstBatch: creates.length ? (creates[0].at - result.startedAtMs) / 1000 : NaN,
    batchesSeconds: creates.length ? (creates[creates.length - 1].at - creates[0].at) / 1000 : NaN,
    requests,
    batches: result.batches,
    complete: result.paths === size && received === size && left === 0 && result.kept === 0,
    received,
    left
  }
}

// ---------------------------------------------------------------------------
// Report

const int = (x) => Math.round(x).toLocaleString('en-US')
const verdict = (ok) => (ok ? 'PASS' : 'FAIL')

function machine (redisVersion) {
  const cpus = os.cpus()
  const model = cpus[0]?.model?.trim() || 'unknown CPU'
  return [
    `**Machine:** ${model}, ${cpus.length} cores, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB RAM, ` +
      `${os.type()} ${os.release()} ${os.arch()}`,
    `**Software:** Node ${process.version}, Redis ${redisVersion}, addon: ${addonBuild()}`
  ]
}

function report ({ mode, cloudfront, settings, machineLines, calls, express, instructions, sends, notes: partNotes, failures }) {
  const lines = []
  lines.push(`## cf-invalidation-tracker benchmark (${mode} run)`, '')
  lines.push(...machineLines.map((l) => `${l}  `), '')
  lines.push('| Benchmark | cf-invalidation-tracker | Baseline | Ratio | Target | Result |')
  lines.push('|---|---:|---:|---:|---|---|')
  const notes = []

  if (calls) {
    const label = { zipf: 'Zipf', unique: 'all-unique' }
    const inFlight = (depth) => (depth === 1 ? 'awaited per 10k' : `${depth}x10k in flight`)
    for (const run of calls) {
      const ratio = run.tracker.callsPerSec / run.baseline.callsPerSec
      const isTarget = run.workload === 'zipf'
      lines.push(`| storeUrl calls/s, ${label[run.workload]}, ${inFlight(run.depth)} | ${int(run.tracker.callsPerSec)} | ` +
        `${int(run.baseline.callsPerSec)} | ${ratio.toFixed(1)}x | ${isTarget ? '>= 10x' : ''} | ${isTarget ? verdict(ratio >= 10) : ''} |`)
    }
    for (const run of calls) {
      const t = run.tracker.commandsPerMillion
      const b = run.baseline.commandsPerMillion
      lines.push(`| Redis commands per 1M calls, sent / executed, ${label[run.workload]}, ${inFlight(run.depth)} | ` +
        `${int(t.clientSent)} / ${int(t.total)} | ${int(b.clientSent)} / ${int(b.total)} | ` +
        `${(b.clientSent / Math.max(t.clientSent, 1)).toFixed(0)}x / ${(b.total / Math.max(t.total, 1)).toFixed(1)}x fewer | | |`)
    }
    for (const run of calls) {
      for (const side of ['tracker', 'baseline']) {
        const r = run[side]
        if (!r.complete) {
          notes.push(`- WARNING: ${side}, ${run.workload}, depth ${run.depth}: Redis holds ${int(r.stored)} of ` +
            `${int(r.distinct)} distinct URLs` + (r.overflow ? ` and ${r.overflow} overflow wildcards` : '') + '.')
        }
      }
    }
    notes.push(`- storeUrl: Zipf = a Zipf(1.0) mix over ${int(URL_SPACE)} URLs; all-unique = every call a new URL. ` +
      'The tracker (`createTracker({ cf, redis: { url }, logger: false })`, default options) against ' +
      `node-redis ${require('redis/package.json').version} (one \`zAdd\` per call on a sorted set, score +inf as the tracker ` +
      'stores, auto-pipelined). Calls are issued in a loop in chunks of 10,000. "Awaited per 10k": after each chunk the ' +
      'bench awaits Promise.all of that chunk; "4x10k in flight": of the chunk issued 3 chunks earlier. The clock stops once every ' +
      'promise resolved (for the tracker, after `flush()`), i.e. with everything in Redis. Each run is a fresh node ' +
      'process against an emptied Redis, which is then checked to hold every distinct URL (else a warning follows). Runs: ' +
      calls.map((r) => `${r.workload}/${r.depth}: tracker ${int(r.tracker.n)} in ${r.tracker.seconds.toFixed(2)} s, ` +
        `baseline ${int(r.baseline.n)} in ${r.baseline.seconds.toFixed(2)} s`).join('; ') + '.')
    notes.push('- Redis commands: `INFO commandstats` summed after `CONFIG RESETSTAT`, scaled to 1M calls. "Sent": ' +
      'commands the client sends (the tracker sends one script call per 2,000 buffered URLs); "executed": with the ' +
      'commands its Lua script runs inside Redis (a variadic ZADD per 500 URLs, plus a few per script call).')
  }

  if (express) {
    const { ratio, control, rate } = express
    const pct = (x) => `${(x * 100).toFixed(1)}%`
    lines.push(`| Express GET requests/s, with \`middleware()\` / without, side by side | ${int(rate.tracker)} | ` +
      `${int(rate.none)} | ${pct(ratio)} | >= 97% | ${verdict(ratio >= 0.97)} |`)
    lines.push('| Control: Express GET requests/s, with a middleware that only calls `next()` / without, side by side | ' +
      `${int(rate.noop)} | ${int(rate.none)} | ${pct(control)} | | |`)
    const e = settings.express
    const range = (values) => `${pct(Math.min(...values))} to ${pct(Math.max(...values))}`
    const cpu = (side) => `${express.serverCpuMicros[side].toFixed(1)} µs`
    notes.push(`- Express ${require('express/package.json').version}: the three servers (without, with the middleware, ` +
      `with the no-op one) loaded at the same time, one autocannon of ${e.connections} connections each, ` +
      `${e.rounds} round${e.rounds === 1 ? '' : 's'} of ${e.roundSec} s` + (e.warmupSec ? ` after a ${e.warmupSec} s warm-up` : '') +
      '; whatever else the machine does hits them alike, and none idles while another is measured. Requests/s are ' +
      'medians per round (each server had a third of a core); each ratio is the median of the per-round ratios ' +
      `(with the middleware: ${range(express.ratios.tracker)}; control: ${range(express.ratios.noop)}). ` +
      (express.pinned ? `Pinned: ${express.pinned}. ` : 'Not pinned to cores (no taskset, or one core). ') +
      'Each server is its own node process serving a Zipf(1.0) mix of GET URLs over 100,000 paths with ' +
      '`Cache-Control: public`; the control shows what one more Express layer costs by itself. ' +
      `The middleware's tracker (Redis store) tracked ${int(express.tracked)} distinct URLs. CPU per request, server ` +
      `process (all threads): ${cpu('tracker')} with the middleware, ${cpu('noop')} with the no-op one, ${cpu('none')} without.` +
      (express.errors ? ` ${express.errors} errors/non-2xx.` : ''))
  }

  if (instructions) {
    const ir = instructions
    const i = settings.instructions
    const share = (side) => `${((ir.none / ir[side]) * 100).toFixed(1)}%`
    lines.push(`| Express, instructions per request (server main thread, callgrind), without / with \`middleware()\` | ` +
      `${int(ir.tracker)} | ${int(ir.none)} | ${share('tracker')} | | |`)
    lines.push('| Control: instructions per request, without / with a middleware that only calls `next()` | ' +
      `${int(ir.noop)} | ${int(ir.none)} | ${share('noop')} | | |`)
    notes.push(`- Instructions: each server alone under valgrind's callgrind, ${int(i.requests)} requests of the same Zipf ` +
      `mix (${i.connections} connections) counted after ${int(i.warmup)} uncounted ones, by when V8 has compiled the ` +
      'hot code (with fewer, the compiler\'s one-time work swamps the difference); node runs with V8\'s ' +
      '`--predictable` (garbage collection and compilation on the main thread, at points that do not depend on timing), ' +
      'and the count is that thread (JavaScript, V8, libuv, the native hand-over), without the writer\'s threads. ' +
      'Counts do not depend on the machine\'s load, but they depend on timing (how many requests each event-loop turn ' +
      'and each write gathers): with the same code, runs have differed by several percent. ' +
      `Under callgrind the server runs about ${VALGRIND_SLOWDOWN} times slower; the tracker's intervals are stretched ` +
      'as much, so that each write gathers as many requests as at full speed. The ratio is without / with.')
  }

  if (sends) {
    for (const s of sends) {
      const isTarget = s.size === 1_000_000
      const ok = s.complete && s.seconds < 10 && s.maxRssMb < 300
      lines.push(`| sendInvalidation, ${int(s.size)} URLs (batchSize ${SEND_BATCH_SIZE}) | ` +
        `${s.seconds.toFixed(2)} s, ${int(s.maxRssMb)} MB peak RSS | | | ${isTarget ? '< 10 s, < 300 MB' : ''} | ` +
        `${isTarget ? verdict(ok) : ''} |`)
      if (!s.complete) {
        notes.push(`- WARNING: send of ${int(s.size)}: CloudFront received ${int(s.received)} paths, ${int(s.left)} URLs left in Redis.`)
      }
    }
    notes.push('- sendInvalidation: Redis is filled first, directly (`ZADD {cfit}:urls +inf <path>`, ' +
      `${int(FILL_MEMBERS_PER_ZADD)} members a command; fill time not counted); a separate node process then creates the tracker ` +
      'and runs only `sendInvalidation()`, against ' + (cloudfront === 'fake'
      ? 'the test suite\'s fake CloudFront (`__test__/helpers/fake-cloudfront.js`, which parses every batch: several ms per 3,000 paths). '
      : 'a local CloudFront-compatible endpoint that answers at once (`bench/cloudfront.js`: batches echoed back, every invalidation completed). ') +
      'Time is that call; ' +
      'peak RSS is that process\'s `resourceUsage().maxRSS`. Phases: ' +
      sends.map((s) => `${int(s.size)} URLs: ${s.beforeFirstBatch.toFixed(2)} s until the first CreateInvalidation ` +
        `(claim, read, plan, save the plan), then ${s.batches} batches in ${s.batchesSeconds.toFixed(2)} s ` +
        `(${s.requests} CloudFront requests), RSS peak at ${s.rssPeakAt.toFixed(2)} s`).join('; ') + '.')
  }

  if (mode === 'smoke') notes.push('- Smoke run: small sizes; targets are reported, not meaningful. The 1,000,000-URL send runs only in the full run.')
  notes.push(...partNotes)
  for (const f of failures) notes.push(`- ERROR in ${f.what}: ${f.message}`)
  lines.push('', ...notes)
  return lines.join('\n')
}

// ---------------------------------------------------------------------------

async function main () {
  const { smoke, only, cloudfront } = parseArgs(process.argv.slice(2), process.env)
  const settings = smoke ? SMOKE : FULL
  const timeoutMs = settings.childTimeoutMs
  let redis
  let cf
  const failures = []
  const results = { calls: null, express: null, instructions: null, sends: null }
  const notes = []
  try {
    redis = await startRedis()
    cf = cloudfront === 'fake'
      ? await startFakeCloudFront({ distributions: [DIST] })
      : await startCloudFrontStub({ dists: [DIST] })
    const info = await redis.client.command('INFO', 'server')
    const redisVersion = /redis_version:(\S+)/.exec(info)?.[1] ?? 'unknown'
    const machineLines = machine(redisVersion)
    const progress = (msg) => process.stderr.write(`bench: ${msg}\n`)

    const step = async (what, fn) => {
      try {
        return await fn()
      } catch (err) {
        failures.push({ what, message: err.message.split('\n')[0] })
        progress(`${what} failed: ${err.stack}`)
        return null
      }
    }

    if (only.has('calls')) {
      results.calls = await step('storeUrl', async () => {
        const out = []
        for (const { workload, depth, tracker, baseline } of settings.calls) {
          const run = { workload, depth }
          for (const [side, n] of [['baseline', baseline], ['tracker', tracker]]) {
            progress(`storeUrl ${workload}, depth ${depth}, ${side}: ${int(n)} calls`)
            run[side] = await measureCalls({ redis, cf, side, workload, n, depth, timeoutMs })
            progress(`  ${int(run[side].callsPerSec)} calls/s`)
          }
          out.push(run)
        }
        return out
      })
    }
    if (only.has('express')) {
      progress('Express with and without the middleware')
      results.express = await step('Express', () => measureExpress({ redis, cf, settings: settings.express, timeoutMs }))
    }
    if (only.has('instructions')) {
      if (!settings.instructions) {
        notes.push('- Instructions per request: not counted in a smoke run.')
      } else if (!hasCallgrind()) {
        notes.push('- Instructions per request: not counted (valgrind is not installed).')
      } else {
        progress('Express under callgrind: instructions per request')
        results.instructions = await step('instructions', () => measureInstructions({ redis, cf, settings: settings.instructions, timeoutMs }))
      }
    }
    if (only.has('send')) {
      results.sends = await step('sendInvalidation', async () => {
        const out = []
        for (const size of settings.send) {
          progress(`sendInvalidation of ${int(size)} URLs`)
          out.push(await measureSend({ redis, cf, size, timeoutMs }))
          progress(`  ${out[out.length - 1].seconds.toFixed(2)} s`)
        }
        return out
      })
    }
    process.stdout.write(report({
      mode: smoke ? 'smoke' : 'full',
      cloudfront,
      settings,
      machineLines,
      ...results,
      notes,
      failures
    }) + '\n')
    return failures.length
  } finally {
    if (cf) await cf.stop().catch(() => {})
    if (redis) await redis.stop().catch(() => {})
  }
}

main().then(
  // A missed target is no failure; a part that crashed is.
  (failed) => process.exit(failed > 0 ? 1 : 0),
  (err) => {
    process.stderr.write(`bench: ${err.stack}\n`)
    process.exit(1)
  }
)
