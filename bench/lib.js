'use strict'

// Shared pieces of the benchmark: the URL workloads, the call driver, child processes and reading Redis's stats.

const fs = require('node:fs')
const path = require('node:path')
const { fork } = require('node:child_process')

const REPO_ROOT = path.resolve(__dirname, '..')

/** A small seeded PRNG (mulberry32): the same workload on every run and on both sides. */
function prng (seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/**
 * `count` ranks drawn from a Zipf(`s`) distribution over 0..`n`-1 (rank 0 the most popular), as a Uint32Array.
 */
function zipfRanks (count, n, { s = 1.0, seed = 42 } = {}) {
  const cdf = new Float64Array(n)
  let sum = 0
  for (let k = 0; k < n; k++) {
    sum += 1 / Math.pow(k + 1, s)
    cdf[k] = sum
  }
  for (let k = 0; k < n; k++) cdf[k] /= sum
  const random = prng(seed)
  const out = new Uint32Array(count)
  for (let i = 0; i < count; i++) {
    const u = random()
    let lo = 0
    let hi = n - 1
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (cdf[mid] < u) lo = mid + 1
      else hi = mid
    }
    out[i] = lo
  }
  return out
}

/**
 * `s` as a flat string. A template literal makes a rope (a V8 cons string) that is flattened on first use; a URL a
 * server gets from its HTTP parser is flat already, so the workloads are made of flat strings, for both sides.
 */
const flat = (s) => Buffer.from(s).toString()

/** The path of the URL of rank `k` in the Zipf workload (also what the Express route serves). */
const catalogPath = (k) => `/catalog/item-${k}.html`

/** The path of the `i`-th URL of the all-unique workload. */
const uniquePath = (i) => `/unique/${i}/page.html`

/**
 * Makes `n` calls of `call(i)` in chunks of `chunk`; after each chunk, awaits Promise.all of the chunk issued
 * `depth - 1` chunks earlier (depth 1: await every chunk right after issuing it). After the last call, `finish()`
 * (e.g. a flush) runs alongside the chunks still in flight. Resolves when every promise has.
 */
async function drive (n, call, { chunk = 10_000, depth = 1, finish } = {}) {
  const inFlight = []
  for (let start = 0; start < n; start += chunk) {
    const end = Math.min(n, start + chunk)
    const promises = new Array(end - start)
    for (let i = start; i < end; i++) promises[i - start] = call(i)
    inFlight.push(Promise.all(promises))
    if (end < n && inFlight.length >= depth) await inFlight.shift()
  }
  if (finish) inFlight.push(finish())
  await Promise.all(inFlight)
}

/**
 * Runs `bench/<script>` in a child node process with `args` (JSON on argv). The child sends `{ type: 'ready' }`
 * when set up; `onReady(child)` may then prepare, and the child is told `go`. Resolves with the child's
 * `{ type: 'result' }` message. The child is killed after `timeoutMs`; BENCH_CPU_PROF=<dir> profiles it.
 */
function runChild (script, args, { timeoutMs, onReady = async () => {}, env } = {}) {
  const execArgv = []
  if (process.env.BENCH_CPU_PROF) execArgv.push('--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`)
  const child = fork(path.join(__dirname, script), [JSON.stringify(args)], {
    execArgv,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc']
  })
  return new Promise((resolve, reject) => {
    let result
    let settled = false
    const finish = (err) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      if (err) {
        child.kill('SIGKILL')
        reject(err)
      } else {
        resolve(result)
      }
    }
    const timer = setTimeout(() => finish(new Error(`${script} did not finish within ${timeoutMs} ms`)), timeoutMs)
    child.on('message', (msg) => {
      if (msg.type === 'ready') {
        Promise.resolve(onReady(child)).then(() => child.send({ type: 'go' }), finish)
      } else if (msg.type === 'result') {
        result = msg
      } else if (msg.type === 'error') {
        finish(new Error(`${script}: ${msg.message}`))
      }
    })
    child.on('error', finish)
    child.on('exit', (code, signal) => {
      if (result && code === 0) finish()
      else finish(new Error(`${script} exited with code ${code}, signal ${signal}${result ? '' : ', no result'}`))
    })
  })
}

/** In a child: the arguments, a `ready`/`go` handshake, and sending the result (or the error) to the parent. */
function childMain (main) {
  const args = JSON.parse(process.argv[2] ?? '{}')
  // Never outlive the parent.
  process.on('disconnect', () => process.exit(1))
  const ready = () => new Promise((resolve) => {
    process.once('message', (msg) => { if (msg.type === 'go') resolve() })
    process.send({ type: 'ready' })
  })
  main(args, ready).then(
    (result) => {
      process.send({ type: 'result', ...result }, () => process.exit(0))
    },
    (err) => {
      process.send({ type: 'error', message: err?.stack ?? String(err) }, () => process.exit(1))
    }
  )
}

/** Calls per command from INFO commandstats, without the commands that read and reset the stats. */
function parseCommandStats (info) {
  const byCommand = {}
  for (const line of info.split('\r\n')) {
    const m = /^cmdstat_([^:]+):calls=(\d+)/.exec(line)
    if (!m) continue
    const name = m[1]
    if (name === 'info' || name.startsWith('config')) continue
    byCommand[name] = Number(m[2])
  }
  return byCommand
}

// Commands a client sends itself; everything else, once a script ran, is taken to be run by scripts.
const CLIENT_LEVEL = /^(eval|evalsha|eval_ro|evalsha_ro|fcall|fcall_ro|script(\|.*)?|hello|client(\|.*)?|ping|select|auth|multi|exec|quit)$/

/**
 * `{ total, clientSent }` from commandstats counts: `total` counts every executed command (Redis counts
 * the commands Lua scripts run too); `clientSent` only those a client sent.
 */
function summarizeCommands (byCommand) {
  let total = 0
  let scripts = 0
  let clientLevel = 0
  for (const [name, calls] of Object.entries(byCommand)) {
    total += calls
    if (CLIENT_LEVEL.test(name)) clientLevel += calls
    if (/^(eval|evalsha|eval_ro|evalsha_ro|fcall|fcall_ro)$/.test(name)) scripts += calls
  }
  return { total, clientSent: scripts > 0 ? clientLevel : total }
}

/** Whether a native addon was built with debug info (an unoptimised debug build), from its ELF section names. */
function addonBuild () {
  const files = fs.readdirSync(REPO_ROOT).filter((f) => f.endsWith('.node') && f.includes(`${process.platform}-${process.arch}`))
  if (files.length === 0) return 'unknown (no local addon file)'
  const file = path.join(REPO_ROOT, files[0])
  const sizeMb = (fs.statSync(file).size / 1e6).toFixed(1)
  try {
    const fd = fs.openSync(file, 'r')
    try {
      const header = Buffer.alloc(64)
      fs.readSync(fd, header, 0, 64, 0)
      if (header.toString('latin1', 1, 4) !== 'ELF' || header[4] !== 2) return `${files[0]} (${sizeMb} MB)`
      const shoff = Number(header.readBigUInt64LE(0x28))
      const shentsize = header.readUInt16LE(0x3a)
      const shnum = header.readUInt16LE(0x3c)
      const shstrndx = header.readUInt16LE(0x3e)
      const table = Buffer.alloc(shentsize * shnum)
      fs.readSync(fd, table, 0, table.length, shoff)
      const strOff = Number(table.readBigUInt64LE(shstrndx * shentsize + 0x18))
      const strSize = Number(table.readBigUInt64LE(shstrndx * shentsize + 0x20))
      const names = Buffer.alloc(strSize)
      fs.readSync(fd, names, 0, strSize, strOff)
      const debug = names.toString('latin1').includes('.debug_info')
      return `${debug ? 'debug' : 'release'} build (${sizeMb} MB)`
    } finally {
      fs.closeSync(fd)
    }
  } catch {
    return `${files[0]} (${sizeMb} MB)`
  }
}

module.exports = {
  REPO_ROOT,
  zipfRanks,
  catalogPath,
  uniquePath,
  flat,
  drive,
  runChild,
  childMain,
  parseCommandStats,
  summarizeCommands,
  addonBuild
}
