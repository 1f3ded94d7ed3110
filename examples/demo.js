'use strict'

// `npm run demo`: the whole job in one go, nothing to configure. It starts the example Express site with an
// in-memory tracker, browses it, shows what was tracked, then shows the invalidation it would send (a dry run).
// With CF_DIST and AWS credentials in the environment, it sends that invalidation for real.

const createTracker = require('..')
const buildApp = require('./express-app')

const env = process.env
const color = process.stdout.isTTY && !env.NO_COLOR
const paint = (code) => (text) => (color ? `\x1b[${code}m${text}\x1b[0m` : String(text))
const bold = paint('1')
const dim = paint('2')
const green = paint('32')
const yellow = paint('33')
const red = paint('31')

/** What the demo asks of the site: [method, url]. */
const VISITS = [
  ['GET', '/'],
  ['GET', '/about'],
  ['HEAD', '/about'],
  ['GET', '/products/42'],
  ['GET', '/images/logo.png?v=3'],
  ['GET', '/old-home'],
  ['GET', '/no-such-page'],
  ['POST', '/cart'],
  ['GET', '/account']
]

function hasAwsCredentials () {
  return Boolean(env.AWS_ACCESS_KEY_ID || env.AWS_PROFILE || (env.AWS_ACCESS_KEY && env.AWS_SECRET_KEY) ||
    env.AWS_WEB_IDENTITY_TOKEN_FILE || env.AWS_CONTAINER_CREDENTIALS_RELATIVE_URI || env.AWS_CONTAINER_CREDENTIALS_FULL_URI)
}

/** Why the middleware left a response alone. */
function whyNot (method, res) {
  if (method !== 'GET' && method !== 'HEAD') return `${method} responses are not cached`
  if (res.status === 404) return 'not found (a 404 stops tracking a URL)'
  const cacheControl = res.headers.get('cache-control') || ''
  if (/private|no-store/.test(cacheControl)) return `Cache-Control: ${cacheControl}`
  return `status ${res.status}`
}

async function main () {
  const realSend = Boolean(env.CF_DIST) && hasAwsCredentials()
  const invl = createTracker({
    cf: {
      dist: env.CF_DIST || 'EDEMO',
      access_key: env.AWS_ACCESS_KEY,
      secret_key: env.AWS_SECRET_KEY,
      endpoint: env.AWS_ENDPOINT_URL_CLOUDFRONT || env.AWS_ENDPOINT_URL
    },
    store: 'memory://',
    logger: { info: (m) => console.log(dim(`    ${m}`)), warn: (m) => console.log(yellow(`    ${m}`)), error: (m) => console.error(red(`    ${m}`)) }
  })

  console.log(bold('cf-invalidation-tracker demo\n'))
  const server = buildApp(invl).listen(0, '127.0.0.1')
  await new Promise((resolve, reject) => server.once('listening', resolve).once('error', reject))
  const base = `http://127.0.0.1:${server.address().port}`
  console.log(`The example Express app (examples/express-app.js) is listening on ${base}`)
  console.log(`with ${bold('app.use(invl.middleware())')} and the tracker on store 'memory://'.\n`)

  try {
    console.log(bold('Requests'))
    const responses = []
    for (const [method, url] of VISITS) {
      const res = await fetch(base + url, { method, redirect: 'manual' })
      await res.arrayBuffer()
      responses.push({ method, url, res })
    }
    await new Promise((resolve) => setImmediate(resolve)) // let the last 'finish' handlers run
    await invl.flush()
    const tracked = new Set(await invl.listUrls())
    const width = Math.max(...VISITS.map(([, url]) => url.length))
    for (const { method, url, res } of responses) {
      const outcome = tracked.has(invl.normalize(url)) ? green('✓ tracked') : dim(`· not tracked: ${whyNot(method, res)}`)
      console.log(`  ${method.padEnd(4)}  ${url.padEnd(width)}  ${res.status}  ${outcome}`)
    }

    const paths = [...tracked].sort()
    console.log(bold(`\nTracked paths (${paths.length})`))
    for (const p of paths) console.log(`  ${p}`)

    if (realSend) {
      console.log(bold(`\nSending the invalidation to CloudFront distribution ${env.CF_DIST}`))
      const report = await invl.sendInvalidation()
      for (const b of report.batches) console.log(`  ${green('✓')} invalidation ${b.id} (${b.status}): ${b.paths.length} paths`)
      console.log(`  Billed ${report.billedPaths} paths; estimated cost $${report.estimatedCostUsd.toFixed(2)}`)
      console.log(dim(`  Check on it: npx cf-invalidation-tracker status ${report.batches[0] ? report.batches[0].id : '<id>'}`))
    } else {
      console.log(bold('\nDry run') + dim(' (set CF_DIST and AWS credentials to send for real)'))
      const report = await invl.sendInvalidation({ dryRun: true })
      report.batches.forEach((b, i) => {
        console.log(`  Batch ${i + 1}: one CreateInvalidation request with ${b.paths.length} paths`)
        for (const p of b.paths) console.log(`    ${p}`)
      })
      console.log(dim('  Nothing was sent. In your app, `npx cf-invalidation-tracker send` sends what your servers tracked.'))
    }
  } finally {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
    await invl.disconnect()
  }
}

main().catch((err) => {
  console.error(red(`demo failed: ${err.message}`))
  process.exitCode = 1
})
