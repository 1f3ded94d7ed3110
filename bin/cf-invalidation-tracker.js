#!/usr/bin/env node
'use strict'

// The command line: send tracked URLs to CloudFront, look at what is tracked, find distributions.
// `cf-invalidation-tracker --help` says how; lib/cli-config.js reads flags and environment.

const fs = require('node:fs')
const createTracker = require('..')
const { parseCli, UsageError } = require('../lib/cli-config')
const { isBucketOrigin } = require('../lib/s3')

const NAME = 'cf-invalidation-tracker'
const SENDING = /^Sending invalidation to CloudFront\.\.\. \((\d+) paths?\)/
const SUCCESS = /^Success!/
const BAR_WIDTH = 24

const plural = (n, word) => `${n.toLocaleString('en-US')} ${word}${n === 1 ? '' : /(?:s|sh|ch|x)$/.test(word) ? 'es' : 's'}`

/**
 * Progress of a send on stderr: a redrawn bar on a terminal when the send spans several batches, else the tracker's
 * lines as they come.
 */
class Progress {
  /**
   * @param {NodeJS.WritableStream & { isTTY?: boolean }} stream
   * @param {{ bar: boolean, total?: number }} options `total`: the paths expected (grows if more are sent)
   */
  constructor (stream, { bar, total = 0 }) {
    this.stream = stream
    this.bar = bar
    this.total = total
    this.sent = 0
    this.current = 0
    this.batch = 0
    this.drawn = false
  }

  /** Handles one line the tracker logged. */
  log (line) {
    const sending = SENDING.exec(line)
    if (this.bar && sending) {
      this.current = Number(sending[1])
      this.batch++
      this.draw()
    } else if (this.bar && SUCCESS.test(line)) {
      this.sent += this.current
      this.current = 0
      this.draw()
    } else {
      this.line(line)
    }
  }

  /** Prints a line (above the bar, when there is one). */
  line (text) {
    this.clear()
    this.stream.write(text + '\n')
    if (this.batch > 0) this.draw()
  }

  draw () {
    const total = Math.max(this.total, this.sent + this.current, 1)
    const filled = Math.round((this.sent / total) * BAR_WIDTH)
    const pct = String(Math.floor((this.sent / total) * 100)).padStart(3)
    this.stream.write(`\r\x1b[2KInvalidating [${'█'.repeat(filled)}${'░'.repeat(BAR_WIDTH - filled)}] ${pct}%  ` +
      `${this.sent.toLocaleString('en-US')}/${total.toLocaleString('en-US')} paths · batch ${this.batch}`)
    this.drawn = true
  }

  clear () {
    if (this.drawn) this.stream.write('\r\x1b[2K')
    this.drawn = false
  }

  /** Removes the bar. */
  done () {
    this.clear()
  }
}

/** Reads URLs from stdin, one per line, when the only operand is '-'. */
async function urlsFrom (operands, stdin) {
  if (operands.length !== 1 || operands[0] !== '-') return operands
  let text = ''
  stdin.setEncoding('utf8')
  for await (const chunk of stdin) text += chunk
  return text.split(/\r?\n/).map((l) => l.trim()).filter(Boolean)
}

function sendSummary (report, dist) {
  const lines = []
  const batches = report.batches
  if (report.dryRun) {
    lines.push(`Dry run${dist ? ` on ${dist}` : ''}: ${plural(report.paths, 'path')} in ${plural(batches.length, 'batch')} ` +
      '(nothing sent, nothing forgotten)')
    batches.forEach((b, i) => {
      lines.push(`Batch ${i + 1}: ${plural(b.paths.length, 'path')}`)
      for (const p of b.paths) lines.push(`  ${p}`)
    })
  } else {
    const accepted = batches.filter((b) => b.status !== 'Kept')
    if (accepted.length === 0) return lines
    const paths = accepted.reduce((n, b) => n + b.paths.length, 0)
    lines.push(`Invalidated ${plural(paths, 'path')} on ${dist} in ${plural(accepted.length, 'batch')}:`)
    for (const b of accepted) lines.push(`  ${b.id}  ${b.status}  ${plural(b.paths.length, 'path')}${b.resumed ? '  (resumed)' : ''}`)
    lines.push(`Billed ${plural(report.billedPaths, 'path')} (${report.billedThisMonth.toLocaleString('en-US')} this month), ` +
      `estimated cost $${report.estimatedCostUsd.toFixed(2)}`)
  }
  if (report.collapsed) lines.push('More paths than --max-paths: some were collapsed into wildcards')
  if (report.overflow.length) lines.push(`Flood-guard wildcards: ${report.overflow.join(' ')}`)
  return lines
}

/** Reads the certificate files of `redis.tls` (`{ ca, cert, key }`, paths or undefined). Throws UsageError. */
function readTlsFiles (files) {
  const flags = { ca: '--redis-ca', cert: '--redis-cert', key: '--redis-key' }
  const tls = {}
  for (const [field, file] of Object.entries(files)) {
    if (file === undefined) continue
    try {
      tls[field] = fs.readFileSync(file, 'utf8')
    } catch (err) {
      throw new UsageError(`cannot read the ${flags[field]} file ${JSON.stringify(file)}: ${err.code ?? err.message}`)
    }
  }
  return tls
}

/**
 * Runs the command line with `argv` (the arguments after the script name). Resolves to the exit status: 0 on
 * success, 1 when the work failed, 2 on a usage or configuration error. Writes results to `stdout`, progress and
 * errors to `stderr`.
 */
async function main (argv, { env = process.env, stdout = process.stdout, stderr = process.stderr, stdin = process.stdin } = {}) {
  const out = (line) => stdout.write(line + '\n')
  let redact = (text) => String(text)
  const fail = (err, code) => {
    stderr.write(`${NAME}: ${redact(err && err.message ? err.message : err).replace(/\s*\n\s*/g, ' ')}\n`)
    return code
  }

  let cli
  try {
    cli = parseCli(argv, env)
  } catch (err) {
    if (err instanceof UsageError) return fail(err, 2)
    throw err
  }
  if (cli.help) {
    stdout.write(cli.help)
    return 0
  }
  if (cli.version) {
    out(require('../package.json').version)
    return 0
  }
  redact = cli.redact

  const progress = new Progress(stderr, { bar: false })
  const logger = {
    info: (m) => { if (!cli.json && m !== 'Nothing to invalidate') progress.log(redact(m)) },
    // 'Error! …' is the failure the command ends with: it is printed once, as the reason. So is a failed write of
    // track/untrack, which the writer would retry in a server ('…, will retry: …'): the command gives up instead.
    warn: (m) => { if (!m.startsWith('Error! ') && !m.includes(', will retry: ')) progress.line(redact(m)) },
    // The tracker logs its failed promises here; every one is awaited below and reported once, by fail().
    error: () => {}
  }
  let tracker
  try {
    if (cli.tlsFiles) cli.options.redis.tls = { ...cli.options.redis.tls, ...readTlsFiles(cli.tlsFiles) }
    tracker = createTracker({ ...cli.options, logger })
  } catch (err) {
    return fail(err, 2)
  }

  try {
    switch (cli.command) {
      case 'send': return await send(tracker, cli, { out, stderr, progress, fail })
      case 'status': {
        const [id] = cli.operands
        const status = await tracker.invalidationStatus(id)
        out(cli.json ? JSON.stringify({ distribution: cli.dist, id, status }) : status)
        return 0
      }
      case 'list': {
        const urls = (await tracker.listUrls()).sort()
        if (cli.json) out(JSON.stringify(urls))
        else for (const u of urls) out(u)
        return 0
      }
      case 'track':
      case 'untrack': {
        const urls = await urlsFrom(cli.operands, stdin)
        const paths = []
        for (const url of urls) {
          try {
            paths.push(tracker.normalize(url))
          } catch (err) {
            return fail(new Error(`cannot ${cli.command} ${JSON.stringify(url)}: ${err.message}`), 2)
          }
        }
        try {
          if (cli.command === 'track') await Promise.all(urls.map((u) => tracker.storeUrl(u, cli.ttl)))
          else await Promise.all(urls.map((u) => tracker.removeUrl(u)))
        } catch (err) {
          // Exit 1 says they were not written: nothing is left for the writer to retry or the exit to wait for.
          tracker._discard()
          throw err
        }
        const key = cli.command === 'track' ? 'tracked' : 'untracked'
        if (cli.json) out(JSON.stringify({ [key]: paths }))
        else out(`${cli.command === 'track' ? 'Tracked' : 'Untracked'} ${plural(paths.length, 'URL')}: ${paths.join(' ')}`)
        return 0
      }
      case 'distributions': {
        let list = await tracker.listDistributions()
        if (cli.origin) list = list.filter((d) => d.origins.some((o) => isBucketOrigin(o, cli.origin)))
        if (cli.json) out(JSON.stringify(list))
        // Each origin with its origin path, as CloudFront joins them: `bucket.s3.amazonaws.com/production`.
        else for (const d of list) out([d.id, d.domainName, d.status, d.origins.map((o, i) => o + d.originPaths[i]).join(',')].join('\t'))
        if (cli.origin && list.length === 0) return fail(new Error(`no distribution has the S3 bucket "${cli.origin}" as its origin`), 1)
        return 0
      }
    }
  } catch (err) {
    return fail(err, 1)
  } finally {
    await tracker.disconnect().catch(() => {})
  }
  return 0
}

async function send (tracker, cli, { out, stderr, progress, fail }) {
  if (!cli.json && !cli.dryRun && stderr.isTTY) {
    // Only a send of several batches gets a bar; it needs the number of paths up front.
    const total = (await tracker.listUrls()).length
    if (total > (cli.options.batchSize ?? 1000)) Object.assign(progress, { bar: true, total })
  }
  let report
  try {
    report = await tracker.sendInvalidation({ wait: cli.wait, dryRun: cli.dryRun })
  } catch (err) {
    progress.done()
    // With --json, stdout holds what is known: the report, or only the error when none was made (the store failed).
    if (cli.json) out(JSON.stringify({ ...err.report, error: { code: err.code, message: cli.redact(err.message) } }))
    if (!err.report) throw err
    if (!cli.json) for (const line of sendSummary(err.report, cli.dist)) out(line)
    return fail(new Error(`${err.message} (${plural(err.report.kept, 'URL')} kept for the next send)`), 1)
  }
  progress.done()
  if (cli.json) out(JSON.stringify(report))
  else if (!report.dryRun && report.batches.length === 0) out('Nothing to invalidate')
  else for (const line of sendSummary(report, cli.dist)) out(line)
  return 0
}

module.exports = { main, Progress }

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => { process.exitCode = code },
    (err) => {
      process.stderr.write(`${NAME}: internal error: ${err && err.message}\n`)
      process.exitCode = 1
    }
  )
}
