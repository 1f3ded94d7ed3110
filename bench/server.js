'use strict'

// Child process: an Express app on 127.0.0.1 with one cacheable GET route, and before it the tracker's middleware
// ('tracker'), a middleware that only calls next() ('noop', the cost of an Express layer itself), or nothing ('none').
// Arguments (JSON): { middleware, redisUrl, endpoint, dist, slowdown? }. Sends { type: 'listening', port }, serves until told
// { type: 'stop' }, then reports how many requests it served and the CPU time it used.

const { REPO_ROOT } = require('./lib')

const args = JSON.parse(process.argv[2] ?? '{}')
const express = require('express')

const app = express()
app.disable('x-powered-by')
app.disable('etag')
let tracker = null
if (args.middleware === 'tracker') {
  const createTracker = require(REPO_ROOT)
  // `slowdown`: the server runs that many times slower (under valgrind); the write interval (its default, which also
  // paces the middleware's hand-over) is stretched as much, so that each write gathers as many requests as at full
  // speed.
  const { DEFAULT_FLUSH_INTERVAL_MS } = require(`${REPO_ROOT}/binding.js`)
  const flushIntervalMs = args.slowdown ? DEFAULT_FLUSH_INTERVAL_MS * args.slowdown : undefined
  tracker = createTracker({ cf: { dist: args.dist, endpoint: args.endpoint }, redis: { url: args.redisUrl }, logger: false, flushIntervalMs })
  app.use(tracker.middleware())
} else if (args.middleware === 'noop') {
  app.use((req, res, next) => next())
}
let served = 0
app.get('/catalog/:item', (req, res) => {
  served++
  res.set('Cache-Control', 'public, max-age=300')
  res.type('html').send('<p>ok</p>')
})

let cpuAtStart
const server = app.listen(0, '127.0.0.1', () => {
  cpuAtStart = process.cpuUsage()
  process.send({ type: 'listening', port: server.address().port })
})
server.on('error', (err) => {
  process.send({ type: 'error', message: err.stack }, () => process.exit(1))
})

process.on('message', async (msg) => {
  if (msg.type !== 'stop') return
  // CPU of the whole process (every thread, the tracker's included) while it served.
  const cpu = process.cpuUsage(cpuAtStart)
  server.closeAllConnections()
  await new Promise((resolve) => server.close(resolve))
  if (tracker) await tracker.disconnect().catch(() => {})
  process.send({ type: 'result', served, cpuMicros: cpu.user + cpu.system }, () => process.exit(0))
})
process.on('disconnect', () => process.exit(0))
