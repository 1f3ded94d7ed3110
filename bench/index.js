'use strict'

// `npm run bench`: storeUrl throughput against a node-redis baseline, Redis commands per call, Express overhead of
// the middleware, and sendInvalidation of large sets. Prints one markdown table (for the README) with the targets.
//
//   npm run bench                  full run (a few minutes)
//   npm run bench -- --smoke       short run for CI (< 60 s); also BENCH_SMOKE=1
//   npm run bench -- --only=calls,express,send
//   npm run bench -- --cloudfront=fake   send to the test suite's fake CloudFront instead of bench/cloudfront.js
//   BENCH_CPU_PROF=/tmp/prof npm run bench   profiles every child process (--cpu-prof)
//
// Every server is local (127.0.0.1) and stopped at the end; the process exits 0 unless the benchmark itself crashes.
// A missed target is reported, not enforced.

const os = require('node:os')
const path = require('node:path')
const { fork } = require('node:child_process')

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

function parseArgs (argv, env) {
  const smoke = argv.includes('--smoke') || env.BENCH_SMOKE === '1'
  const onlyArg = argv.find((a) => a.startsWith('--only='))
  const only = new Set(onlyArg ? onlyArg.slice('--only='.length).split(',') : ['calls', 'express', 'send'])
  for (const part of only) {
    if (!['calls', 'express', 'send'].includes(part)) throw new RangeError(`--only takes calls, express, send; not ${part}`)
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
  express: { warmupSec: 2, rounds: 9, roundSec: 2, connections: 10 },
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

function startServer (args, timeoutMs) {
  const child = fork(path.join(__dirname, 'server.js'), [JSON.stringify(args)], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc']
  })
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
    }
  }
}

async function loadTest (port, seconds, connections, ranks) {
  let next = 0
  const result = await autocannon({
    url: `http://127.0.0.1:${port}`,
    connections,
    duration: seconds,
    requests: [{
      method: 'GET',
      setupRequest (req) {
        const rank = ranks[next]
        next = next + 1 === ranks.length ? 0 : next + 1
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

async function redisCpuSeconds (raw) {
  const info = await raw.command('INFO', 'cpu')
  const user = Number(/used_cpu_user:([\d.]+)/.exec(info)?.[1] ?? 0)
  const sys = Number(/used_cpu_sys:([\d.]+)/.exec(info)?.[1] ?? 0)
  return user + sys
}

async function measureExpress ({ redis, cf, settings, timeoutMs }) {
  const raw = redis.client
  await raw.command('FLUSHALL')
  const common = { redisUrl: redis.url, endpoint: cf.endpoint, dist: DIST }
  const servers = {
    none: startServer({ ...common, middleware: false }, timeoutMs),
    middleware: startServer({ ...common, middleware: true }, timeoutMs)
  }
  try {
    const ports = {
      none: await servers.none.listening,
      middleware: await servers.middleware.listening
    }
    const ranks = zipfRanks(1_000_000, URL_SPACE, { seed: 7 })
    const { warmupSec, rounds, roundSec, connections } = settings
    if (warmupSec > 0) {
      for (const which of ['none', 'middleware']) await loadTest(ports[which], warmupSec, connections, ranks)
    }
    const totals = {
      none: { requests: 0, seconds: 0, errors: 0, redisCpu: 0 },
      middleware: { requests: 0, seconds: 0, errors: 0, redisCpu: 0 }
    }
    // Short alternating rounds (in alternating order), so that the machine's drift and bursts of other load hit
    // both sides alike; the ratio is the median of the ratios of adjacent rounds.
    const pairRatios = []
    for (let round = 0; round < rounds; round++) {
      const rate = {}
      for (const which of round % 2 === 0 ? ['none', 'middleware'] : ['middleware', 'none']) {
        const cpuBefore = await redisCpuSeconds(raw)
        const r = await loadTest(ports[which], roundSec, connections, ranks)
        totals[which].redisCpu += (await redisCpuSeconds(raw)) - cpuBefore
        totals[which].requests += r.requests
        totals[which].seconds += r.seconds
        totals[which].errors += r.errors
        rate[which] = r.requests / r.seconds
      }
      pairRatios.push(rate.middleware / rate.none)
    }
    pairRatios.sort((a, b) => a - b)
    const mid = pairRatios.length >> 1
    const ratio = pairRatios.length % 2 ? pairRatios[mid] : (pairRatios[mid - 1] + pairRatios[mid]) / 2
    const stats = { middleware: await servers.middleware.stop(), none: await servers.none.stop() }
    const tracked = await raw.command('ZCARD', URLS_KEY)
    // CPU per request served (warm-up included), of the server process and of Redis (measured rounds only).
    const cpuPerRequest = (which) => stats[which] && stats[which].served > 0 ? stats[which].cpuMicros / stats[which].served : NaN
    return {
      none: totals.none.requests / totals.none.seconds,
      middleware: totals.middleware.requests / totals.middleware.seconds,
      ratio,
      pairRatios,
      errors: totals.none.errors + totals.middleware.errors,
      tracked,
      serverCpuMicros: { none: cpuPerRequest('none'), middleware: cpuPerRequest('middleware') },
      redisCpuMicros: {
        none: (totals.none.redisCpu * 1e6) / totals.none.requests,
        middleware: (totals.middleware.redisCpu * 1e6) / totals.middleware.requests
      }
    }
  } finally {
    await Promise.all(Object.values(servers).map((s) => s.stop().catch(() => s.kill())))
  }
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

function report ({ mode, cloudfront, settings, machineLines, calls, express, sends, failures }) {
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
    const { ratio } = express
    lines.push(`| Express GET requests/s, with \`middleware()\` / without | ${int(express.middleware)} | ` +
      `${int(express.none)} | ${(ratio * 100).toFixed(1)}% | >= 97% | ${verdict(ratio >= 0.97)} |`)
    const e = settings.express
    notes.push(`- Express ${require('express/package.json').version}: autocannon, ${e.connections} connections, ` +
      `${e.rounds} alternating round${e.rounds === 1 ? '' : 's'} of ${e.roundSec} s per side` + (e.warmupSec ? ` after a ${e.warmupSec} s warm-up each` : '') +
      '; the ratio is the median of the ratios of adjacent rounds (' +
      `${(express.pairRatios[0] * 100).toFixed(0)}% to ${(express.pairRatios[express.pairRatios.length - 1] * 100).toFixed(0)}%)` +
      '; the server runs in its own node process, a Zipf(1.0) mix of GET URLs over 100,000 paths, `Cache-Control: public`. ' +
      `The middleware's tracker (Redis store) tracked ${int(express.tracked)} distinct URLs. CPU per request: server process ` +
      `${express.serverCpuMicros.middleware.toFixed(1)} µs with, ${express.serverCpuMicros.none.toFixed(1)} µs without (all threads); ` +
      `Redis ${express.redisCpuMicros.middleware.toFixed(1)} µs with, ${express.redisCpuMicros.none.toFixed(1)} µs without.` +
      (express.errors ? ` ${express.errors} errors/non-2xx.` : ''))
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
  const results = { calls: null, express: null, sends: null }
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
