'use strict'

// The package as npm publishes it: the root package (JavaScript, types, CLI) and this platform's package holding the
// addon, packed with `npm pack` and installed into an empty project from the tarballs alone, then used from there.

const { test } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFile } = require('node:child_process')
const { promisify } = require('node:util')

const { runNode } = require('./helpers/run')

const ROOT = path.join(__dirname, '..')
const NPM = process.platform === 'win32' ? 'npm.cmd' : 'npm'

async function npm (args, cwd) {
  const { stdout } = await promisify(execFile)(NPM, args, { cwd, timeout: 120_000, maxBuffer: 16 << 20 })
  return stdout
}

/** Packs the package in `dir` into `into` without running its scripts; resolves the tarball's path and its files. */
async function pack (dir, into) {
  const [info] = JSON.parse(await npm(['pack', '--json', '--ignore-scripts', '--pack-destination', into], dir))
  return { tarball: path.join(into, info.filename), files: info.files.map((f) => f.path) }
}

test('packed and installed from its tarballs, the package loads its platform addon and works', async () => {
  const addon = fs.readdirSync(ROOT).find((f) => /^cf-invalidation-tracker\..+\.node$/.test(f))
  assert.ok(addon, 'the addon is built')
  const platform = addon.split('.')[1] // linux-x64-gnu, say
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'cfit-package-'))
  try {
    // The platform package as `napi artifacts` leaves it before publishing: its package.json and the addon.
    const platformDir = path.join(work, platform)
    fs.cpSync(path.join(ROOT, 'npm', platform), platformDir, { recursive: true })
    fs.copyFileSync(path.join(ROOT, addon), path.join(platformDir, addon))
    const manifest = JSON.parse(fs.readFileSync(path.join(platformDir, 'package.json'), 'utf8'))
    assert.equal(manifest.main, addon)
    assert.equal(manifest.version, require('../package.json').version)

    const root = await pack(ROOT, work)
    const native = await pack(platformDir, work)
    assert.deepEqual(native.files.sort(), [addon, 'README.md', 'package.json'].sort())
    for (const file of ['index.js', 'index.mjs', 'index.d.ts', 'binding.js', 'binding.d.ts', 'lib/options.js',
      'bin/cf-invalidation-tracker.js', 'README.md']) {
      assert.ok(root.files.includes(file), `${file} is published`)
    }
    assert.ok(!root.files.some((f) => f.endsWith('.node') || f.startsWith('src/') || f.startsWith('__test__/')),
      `only what users run is published: ${root.files.join(', ')}`)

    const project = path.join(work, 'project')
    fs.mkdirSync(project)
    fs.writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'project', private: true }))
    await npm(['install', '--offline', '--no-audit', '--no-fund', root.tarball, native.tarball], project)

    const script = path.join(project, 'use.js')
    fs.writeFileSync(script, `
      const tracker = require('cf-invalidation-tracker')({ cf: { dist: 'E2EXAMPLE' }, store: 'memory', logger: false })
      ;(async () => {
        await tracker.storeUrl('/a b.html?x=1')
        const report = await tracker.sendInvalidation({ dryRun: true })
        console.log(JSON.stringify({ urls: await tracker.listUrls(), paths: report.batches.flatMap((b) => b.paths) }))
        await tracker.disconnect()
      })()
    `)
    const used = await runNode(script, [], { env: {} })
    assert.equal(used.code, 0, used.stderr)
    assert.deepEqual(JSON.parse(used.stdout), { urls: ['/a%20b.html?x=1'], paths: ['/a%20b.html?x=1'] })

    const cli = await runNode(path.join(project, 'node_modules', '.bin', 'cf-invalidation-tracker'), ['--version'])
    assert.equal(cli.code, 0, cli.stderr)
    assert.equal(cli.stdout.trim(), require('../package.json').version)
  } finally {
    fs.rmSync(work, { recursive: true, force: true })
  }
})
