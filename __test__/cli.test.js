'use strict'

// The command line, spawned as users run it, against a real Redis and moto.

const { test, describe, before, after } = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const fs = require('node:fs')

const { startRedis, startMoto, awsTestEnv, freePort } = require('./helpers/services')
const { parseCli, cfFromEnv, redactor, UsageError } = require('../lib/cli-config')
const { Progress } = require('../bin/cf-invalidation-tracker')

const { runNode } = require('./helpers/run')

const BIN = path.join(__dirname, '..', 'bin', 'cf-invalidation-tracker.js')

/** Runs the CLI with exactly `env` (plus PATH); resolves `{ code, stdout, stderr }`. */
function run (args, env = {}, input) {
  return runNode(BIN, args, { env, input: input ?? '' })
}

/** Asserts a failure: `code`, nothing on stdout (unless `stdout` allowed) and one line on stderr matching `re`. */
function assertFails (r, code, re) {
  assert.equal(r.code, code, `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`)
  const lines = r.stderr.trimEnd().split('\n')
  assert.equal(lines.length, 1, `one line on stderr: ${r.stderr}`)
  assert.match(lines[0], /^cf-invalidation-tracker: /)
  assert.match(lines[0], re)
}

describe('cli without services', () => {
  test('--help, --version, and a shebang with the executable bit', async () => {
    const help = await run(['--help'])
    assert.equal(help.code, 0)
    for (const word of ['send', 'status <id>', 'list', 'track <url...>', 'untrack <url...>', 'distributions', '--origin',
      '--dry-run', '--wait', '--json', 'CF_DIST', 'REDIS_URL', 'REDISTOGO_URL', 'AWS_ENDPOINT_URL_CLOUDFRONT']) {
      assert.ok(help.stdout.includes(word), word)
    }
    const version = await run(['-v'])
    assert.equal(version.code, 0)
    assert.equal(version.stdout.trim(), require('../package.json').version)
    assert.ok(fs.readFileSync(BIN, 'utf8').startsWith('#!/usr/bin/env node\n'))
    if (process.platform !== 'win32') assert.ok(fs.statSync(BIN).mode & 0o111, 'executable')
  })

  test('usage and configuration errors exit 2 with one line', async () => {
    assertFails(await run([]), 2, /missing command/)
    assertFails(await run(['frobnicate']), 2, /unknown command "frobnicate"/)
    assertFails(await run(['send', '--nope']), 2, /--nope/)
    assertFails(await run(['send'], { REDIS_URL: 'redis://127.0.0.1:1' }), 2, /CF_DIST/)
    assertFails(await run(['send'], { CF_DIST: 'E1' }), 2, /REDIS_URL/)
    assertFails(await run(['list', '--wait'], { REDIS_URL: 'redis://127.0.0.1:1' }), 2, /--wait is not an option of list/)
    // A value starting with a dash: how to give it.
    assertFails(await run(['track', '/a', '--ttl', '-1'], { REDIS_URL: 'redis://127.0.0.1:1' }), 2, /--ttl=-XYZ/)
    assertFails(await run(['track', '/a', '--ttl=-1'], { REDIS_URL: 'redis://127.0.0.1:1' }), 2, /--ttl must be a number of seconds, got "-1"/)
    assertFails(await run(['status'], { CF_DIST: 'E1' }), 2, /status <id>/)
    assertFails(await run(['track'], { REDIS_URL: 'redis://127.0.0.1:1' }), 2, /track <url\.\.\.>/)
    assertFails(await run(['send', '--batch-size', '5000'], { CF_DIST: 'E1', REDIS_URL: 'redis://x:1' }), 2, /--batch-size/)
    assertFails(await run(['send', '--endpoint', 'ftp://x'], { CF_DIST: 'E1', REDIS_URL: 'redis://x:1' }), 2, /endpoint/)
    assertFails(await run(['distributions'], { AWS_SECRET_KEY: 'x' }), 2, /AWS_SECRET_KEY is set without AWS_ACCESS_KEY/)
  })

  test('a store that is down: exit 1, and the Redis password is never printed', async () => {
    const r = await run(['list'], { REDIS_URL: 'redis://user:Pa55w0rd-s3cret@127.0.0.1:1' })
    assertFails(r, 1, /Redis/)
    assert.ok(!r.stderr.includes('Pa55w0rd-s3cret'))
    // send --json: stdout holds the error even though no report was made.
    const json = await run(['send', '--json'], { CF_DIST: 'E1', REDIS_URL: 'redis://user:Pa55w0rd-s3cret@127.0.0.1:1' })
    assert.equal(json.code, 1)
    const { error } = JSON.parse(json.stdout)
    assert.equal(error.code, 'ERR_CFIT_REDIS')
    assert.ok(!json.stdout.includes('Pa55w0rd-s3cret') && !json.stderr.includes('Pa55w0rd-s3cret'))
    // Nor when the URL lacks its scheme, and is refused.
    const slip = await run(['list'], { REDIS_URL: 'user:Pa55w0rd-s3cret@127.0.0.1:1' })
    assertFails(slip, 2, /\*\*\*@127\.0\.0\.1:1/)
    assert.ok(!slip.stderr.includes('Pa55w0rd-s3cret'))
    // track and untrack give up at the first failed write, with the reason once (no retry line, nothing left to
    // write at exit).
    assertFails(await run(['track', '/a', '/b'], { REDIS_URL: 'redis://127.0.0.1:1' }), 1, /Redis store at redis:\/\/127\.0\.0\.1:1: .*refused/)
    assertFails(await run(['untrack', '/a'], { REDIS_URL: 'redis://127.0.0.1:1' }), 1, /Redis store at redis:\/\/127\.0\.0\.1:1: .*refused/)
  })
})

describe('cli configuration', () => {
  test('flags win over the environment; the original\'s key variables become explicit keys', () => {
    const env = {
      CF_DIST: 'EENV',
      AWS_ENDPOINT_URL: 'http://generic:1',
      AWS_ENDPOINT_URL_CLOUDFRONT: 'http://cf:2',
      REDISTOGO_URL: 'redis://togo:3',
      AWS_ACCESS_KEY: 'AKIAORIGINAL00000000',
      AWS_SECRET_KEY: 'secret/original/key/0000000000000000000000'
    }
    const cli = parseCli(['send', '--prefix', 'site', '--batch-size', '500', '--query-strings', 'wildcard'], env)
    assert.deepEqual(cli.options, {
      cf: { dist: 'EENV', endpoint: 'http://cf:2', access_key: env.AWS_ACCESS_KEY, secret_key: env.AWS_SECRET_KEY },
      redis: { REDIS_URL: 'redis://togo:3', prefix: 'site' },
      batchSize: 500,
      queryStrings: 'wildcard'
    })
    const flags = parseCli(['list', '--dist', 'EFLAG', '--redis', 'redis://flag:4', '--endpoint', 'http://flag:5', '--region', 'eu-west-1'],
      { ...env, REDIS_URL: 'redis://env:6' })
    assert.equal(flags.options.cf.dist, 'EFLAG')
    assert.equal(flags.options.cf.endpoint, 'http://flag:5')
    assert.equal(flags.options.cf.region, 'eu-west-1')
    assert.equal(flags.options.redis.url, 'redis://flag:4')
    assert.equal(parseCli(['list'], { REDIS_URL: 'redis://env:6', REDISTOGO_URL: 'redis://togo:3' }).options.redis.url, 'redis://env:6')
    // The standard variables are the SDK's business: no keys are passed then.
    assert.deepEqual(cfFromEnv({ AWS_ACCESS_KEY_ID: 'AKIA', AWS_SECRET_ACCESS_KEY: 's', AWS_ENDPOINT_URL: 'http://g:1' }),
      { endpoint: 'http://g:1' })
    // Dry runs and commands that never send need no distribution.
    assert.equal(parseCli(['send', '--dry-run'], { REDIS_URL: 'redis://r:1' }).dist, undefined)
    assert.equal(parseCli(['distributions'], {}).options.store, 'memory://')
    assert.throws(() => parseCli(['send'], { REDIS_URL: 'redis://r:1' }), UsageError)
  })

  test('redaction masks keys, tokens and URL passwords', () => {
    const redact = redactor(['secret/original/key/0000', 'p4ssw0rd!'])
    assert.equal(redact('failed for redis://u:p4ssw0rd!@h:1 with secret/original/key/0000'), 'failed for redis://***@h:1 with ***')
    const cli = parseCli(['list'], { REDIS_URL: 'redis://:hunter2hunter2@h:1', AWS_SESSION_TOKEN: 'TOKENTOKENTOKEN' })
    assert.equal(cli.redact('hunter2hunter2 TOKENTOKENTOKEN'), '*** ***')
    // REDIS_PASSWORD is masked where it is used (a Sentinel's master), and leaves output alone where it is not.
    const env = { REDIS_URL: 'redis://:s3ntinel-pass@s1:26379,redis://s2:26379', REDIS_PASSWORD: 'html' }
    assert.equal(parseCli(['list'], env).redact('/index.html'), '/index.html')
    const sentinel = parseCli(['list', '--redis-sentinel', 'cache'], env)
    assert.equal(sentinel.redact('html s3ntinel-pass'), '*** ***')
    assert.deepEqual(sentinel.options.redis, {
      sentinel: { name: 'cache', nodes: ['redis://:s3ntinel-pass@s1:26379', 'redis://s2:26379'] },
      password: 'html'
    })
  })

  test('the progress bar redraws on a terminal; plain lines otherwise', () => {
    const tty = { isTTY: true, text: '', write (s) { this.text += s } }
    const bar = new Progress(tty, { bar: true, total: 2500 })
    for (const n of [1000, 1000, 500]) {
      bar.log(`Sending invalidation to CloudFront... (${n} paths)`)
      bar.log('Success! 201')
    }
    bar.log('Waiting for CloudFront: 3000 paths and 0 wildcards in progress')
    bar.done()
    assert.match(tty.text, /\[█{10}░{14}\]  40%  1,000\/2,500 paths · batch 2/)
    assert.match(tty.text, /\[█{24}\] 100%  2,500\/2,500 paths · batch 3/)
    assert.match(tty.text, /\r\x1b\[2KWaiting for CloudFront: 3000 paths and 0 wildcards in progress\n/)
    assert.ok(tty.text.endsWith('\r\x1b[2K'))

    const pipe = { text: '', write (s) { this.text += s } }
    const plain = new Progress(pipe, { bar: false })
    plain.log('Sending invalidation to CloudFront... (3 paths)')
    plain.log('Success! 201')
    plain.done()
    assert.equal(pipe.text, 'Sending invalidation to CloudFront... (3 paths)\nSuccess! 201\n')
  })
})

describe('cli against Redis and moto', () => {
  let redis, moto, dist, bucketDist, env
  const received = async (id = dist) => (await moto.allInvalidatedPaths(id)).flatMap((i) => i.paths).sort()

  before(async () => {
    ;[redis, moto] = await Promise.all([startRedis(), startMoto()])
    dist = (await moto.createDistribution({ originDomain: 'www.example.com' })).id
    bucketDist = (await moto.createDistribution({ originDomain: 'assets-bucket.s3.eu-west-1.amazonaws.com', originPath: '/live', s3: true })).id
    env = { ...awsTestEnv, CF_DIST: dist, REDIS_URL: redis.url, AWS_ENDPOINT_URL_CLOUDFRONT: moto.endpoint }
  })
  after(async () => {
    await Promise.allSettled([redis?.stop(), moto?.stop()])
  })

  test('track, list, dry run, send --json, status, untrack', async () => {
    const tracked = await run(['track', '/', '/about', '/img/a b.png?v=2', 'https://www.example.com/blog/'], env)
    assert.equal(tracked.code, 0, tracked.stderr)
    assert.match(tracked.stdout, /^Tracked 4 URLs: /)
    const want = ['/', '/about', '/blog/', '/img/a%20b.png?v=2']
    assert.deepEqual((await run(['list'], env)).stdout.trim().split('\n'), want)
    assert.deepEqual(JSON.parse((await run(['list', '--json'], env)).stdout), want)
    assert.deepEqual(await redis.client.command('ZRANGE', '{cfit}:urls', 0, -1), want)

    const dry = await run(['send', '--dry-run'], env)
    assert.equal(dry.code, 0, dry.stderr)
    assert.match(dry.stdout, /^Dry run on \S+: 4 paths in 1 batch \(nothing sent, nothing forgotten\)\nBatch 1: 4 paths\n/)
    for (const p of want) assert.ok(dry.stdout.includes(`\n  ${p}\n`) || dry.stdout.endsWith(`\n  ${p}\n`), p)
    assert.deepEqual(await received(), [])

    const untracked = await run(['untrack', '/about'], env)
    assert.equal(untracked.code, 0, untracked.stderr)

    const sent = await run(['send', '--json', '--batch-size', '2'], env)
    assert.equal(sent.code, 0, sent.stderr)
    const report = JSON.parse(sent.stdout)
    assert.equal(report.paths, 3)
    assert.equal(report.batches.length, 2)
    for (const batch of report.batches) {
      const inv = await moto.getInvalidation(dist, batch.id)
      assert.deepEqual(inv.paths.sort(), [...batch.paths].sort())
    }
    assert.deepEqual(await received(), ['/', '/blog/', '/img/a%20b.png?v=2'])
    assert.equal((await run(['list'], env)).stdout, '')

    const status = await run(['status', report.batches[0].id], env)
    assert.equal(status.code, 0, status.stderr)
    assert.match(status.stdout.trim(), /^(Completed|COMPLETED)$/)
    const statusJson = JSON.parse((await run(['status', report.batches[0].id, '--json'], env)).stdout)
    assert.deepEqual(Object.keys(statusJson).sort(), ['distribution', 'id', 'status'])

    const nothing = await run(['send'], env)
    assert.equal(nothing.code, 0)
    assert.equal(nothing.stdout, 'Nothing to invalidate\n')
  })

  test('send --timeout gives up on an unreachable CloudFront after that long; the URLs stay tracked', async () => {
    const prefix = 'timeout'
    assert.equal((await run(['track', '/kept', '--prefix', prefix], env)).code, 0)
    const unreachable = { ...env, AWS_ENDPOINT_URL_CLOUDFRONT: `http://127.0.0.1:${await freePort()}` }
    const started = Date.now()
    // The SDK's own retries of a refused connection take up to 3 s: the bound leaves room for them to say why.
    const r = await run(['send', '--timeout', '6', '--prefix', prefix], unreachable)
    assert.equal(r.code, 1, r.stderr)
    assert.match(r.stderr, /sendTimeoutMs \(6000 ms\) passed/)
    // Each failed try says why in words, without the SDK's debug dump.
    assert.match(r.stderr, /^CloudFront NetworkError: dispatch failure: .*Connection refused( \(os error \d+\))?$/m)
    // The error it ends with says why too.
    assert.match(r.stderr, /sendTimeoutMs \(6000 ms\) passed \(last failure: CloudFront NetworkError: dispatch failure: .*Connection refused/)
    assert.doesNotMatch(r.stderr, /DispatchFailure|ConnectorError|\{ /)
    assert.ok(Date.now() - started < 30_000, `${Date.now() - started} ms`)
    assert.deepEqual((await run(['list', '--prefix', prefix], env)).stdout, '/kept\n')
    assertFails(await run(['send', '--timeout', '0'], env), 2, /--timeout must be an integer from 1/)
  })

  test('send without AWS credentials fails at once and says so; the URLs stay tracked', async () => {
    const prefix = 'nocredentials'
    assert.equal((await run(['track', '/kept', '--prefix', prefix], env)).code, 0)
    const none = { ...env }
    for (const name of ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN']) delete none[name]
    const before = await received()
    const started = Date.now()
    const r = await run(['send', '--prefix', prefix], none)
    assert.equal(r.code, 1, r.stderr)
    assert.match(r.stderr, /^cf-invalidation-tracker: CloudFront CredentialsNotLoaded: no usable AWS credentials: .*no credentials found in chain/m)
    assert.doesNotMatch(r.stderr, /sendTimeoutMs|retrying/)
    // Not after sendTimeoutMs (15 minutes by default) of retries: the SDK looks for credentials once.
    assert.ok(Date.now() - started < 10_000, `${Date.now() - started} ms`)
    assert.deepEqual(await received(), before)
    assert.deepEqual((await run(['list', '--prefix', prefix], env)).stdout, '/kept\n')
  })

  test('plain output of a send: the tracker\'s lines on stderr, a summary on stdout', async () => {
    await run(['track', '/one', '/two', '/three', '--ttl', '3600'], env)
    const r = await run(['send', '--wait', '--batch-size', '2'], env)
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /^Invalidated 3 paths on \S+ in 2 batches:\n {2}\S+ {2}(Completed|COMPLETED) {2}2 paths\n {2}\S+ {2}(Completed|COMPLETED) {2}1 path\nBilled 3 paths/)
    assert.equal(r.stderr, 'Sending invalidation to CloudFront... (2 paths)\nSuccess! 201\n' +
      'Sending invalidation to CloudFront... (1 paths)\nSuccess! 201\n')
  })

  test('track - reads URLs from stdin; REDISTOGO_URL and the original\'s AWS_ACCESS_KEY/AWS_SECRET_KEY work', async () => {
    const original = {
      PATH: process.env.PATH,
      AWS_REGION: 'us-east-1',
      AWS_EC2_METADATA_DISABLED: 'true',
      AWS_CONFIG_FILE: awsTestEnv.AWS_CONFIG_FILE,
      AWS_SHARED_CREDENTIALS_FILE: awsTestEnv.AWS_SHARED_CREDENTIALS_FILE,
      AWS_ACCESS_KEY: 'AKIAIOSFODNN7EXAMPLE',
      AWS_SECRET_KEY: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY',
      CF_DIST: dist,
      REDISTOGO_URL: redis.url,
      AWS_ENDPOINT_URL: moto.endpoint
    }
    const t = await run(['track', '-', '--json'], original, '/stdin/1\n\n/stdin/2\r\n')
    assert.equal(t.code, 0, t.stderr)
    assert.deepEqual(JSON.parse(t.stdout), { tracked: ['/stdin/1', '/stdin/2'] })
    const r = await run(['send', '--json'], original)
    assert.equal(r.code, 0, r.stderr)
    assert.equal(JSON.parse(r.stdout).paths, 2)
    assert.ok((await received()).includes('/stdin/2'))
    assert.ok(!r.stdout.includes(original.AWS_SECRET_KEY) && !r.stderr.includes(original.AWS_SECRET_KEY))
  })

  test('REDISTOGO_URL with its user name works against a Redis with a password, as with the original', async () => {
    const secured = await startRedis({ password: 's3cret' })
    try {
      const togo = { ...env, REDIS_URL: undefined, REDISTOGO_URL: `redis://redistogo:s3cret@127.0.0.1:${new URL(secured.url).port}/` }
      delete togo.REDIS_URL
      const t = await run(['track', '/togo'], togo)
      assert.equal(t.code, 0, t.stderr)
      assert.deepEqual(await secured.client.command('ZRANGE', '{cfit}:urls', 0, -1), ['/togo'])
      // Given as --redis (or REDIS_URL), a user name is an ACL user, as in any Redis URL.
      const asFlag = await run(['track', '/flag', '--redis', togo.REDISTOGO_URL], togo)
      assert.equal(asFlag.code, 1)
      assert.match(asFlag.stderr, /AuthenticationFailed/)
      assert.ok(!asFlag.stderr.includes('s3cret'))
    } finally {
      await secured.stop()
    }
  })

  test('distributions and distributions --origin', async () => {
    const all = await run(['distributions'], env)
    assert.equal(all.code, 0, all.stderr)
    const rows = all.stdout.trim().split('\n').map((l) => l.split('\t'))
    assert.deepEqual(rows.map((r) => r[0]).sort(), [dist, bucketDist].sort())
    const found = await run(['distributions', '--origin', 'assets-bucket'], env)
    assert.equal(found.code, 0, found.stderr)
    assert.deepEqual(found.stdout.trim().split('\t').filter((_, i) => i !== 1 && i !== 2),
      [bucketDist, 'assets-bucket.s3.eu-west-1.amazonaws.com/live'])
    const json = JSON.parse((await run(['distributions', '--origin', 'assets-bucket', '--json'], env)).stdout)
    assert.deepEqual(json.map((d) => d.id), [bucketDist])
    assert.deepEqual(json[0].origins, ['assets-bucket.s3.eu-west-1.amazonaws.com'])
    assert.deepEqual(json[0].originPaths, ['/live'])
    assertFails(await run(['distributions', '--origin', 'no-such-bucket'], env), 1, /no-such-bucket/)
  })

  test('CloudFront refuses: exit 1 with one line, --json still prints the report, nothing is forgotten', async () => {
    await run(['track', '/kept'], env)
    const bad = { ...env, CF_DIST: 'NOSUCHDIST' }
    const r = await run(['send'], bad)
    assert.equal(r.code, 1)
    assert.equal(r.stdout, '')
    // The tracker's progress lines, then the reason, once.
    assert.match(r.stderr, /^Sending invalidation to CloudFront\.\.\. \(1 paths\)\ncf-invalidation-tracker: CloudFront NoSuchDistribution: .*\(1 URL kept for the next send\)\n$/)
    const j = await run(['send', '--json'], bad)
    assert.equal(j.code, 1)
    const report = JSON.parse(j.stdout)
    assert.equal(report.kept, 1)
    assert.equal(report.error.code, 'ERR_CFIT_CLOUDFRONT')
    assert.match(j.stderr, /NoSuchDistribution/)
    assert.deepEqual(JSON.parse((await run(['list', '--json'], env)).stdout), ['/kept'])
    const s = await run(['status', 'NOSUCHINVALIDATION'], env)
    assertFails(s, 1, /NoSuchInvalidation|does not exist|not found/i)
    const ok = await run(['send', '--json'], env)
    assert.equal(ok.code, 0, ok.stderr)
  })
})
