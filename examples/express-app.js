'use strict'

// An Express site that tracks what it serves. `buildApp(invl)` builds it around a tracker (examples/demo.js does);
// `node examples/express-app.js` runs it on http://127.0.0.1:3000 (PORT), with the Redis store when REDIS_URL is set.
//
// In your app, require('cf-invalidation-tracker') where this file requires '..'.

const express = require('express')

const PNG = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==',
  'base64'
)

const page = (title, body) => `<!doctype html><title>${title}</title><h1>${title}</h1>${body}\n`

/**
 * The site: cacheable pages and an image, a redirect, a private page, a POST endpoint and a 404 page.
 * @param {import('..').Tracker} invl the tracker its middleware records into
 */
function buildApp (invl) {
  const app = express()

  // Records every cacheable GET/HEAD response once it is sent; a 404 stops tracking its URL.
  app.use(invl.middleware())

  app.get('/', (req, res) => res.send(page('Home', '<a href="/products/42">Product 42</a>')))
  app.get('/about', (req, res) => res.send(page('About', '<p>Served once, cached by CloudFront.</p>')))
  app.get('/products/:id', (req, res) => {
    res.set('Cache-Control', 'public, max-age=300').send(page(`Product ${req.params.id}`, '<img src="/images/logo.png?v=3">'))
  })
  app.get('/images/logo.png', (req, res) => res.set('Cache-Control', 'public, max-age=86400').type('png').send(PNG))
  app.get('/old-home', (req, res) => res.redirect(301, '/'))

  // Never cached by CloudFront, so never tracked.
  app.get('/account', (req, res) => res.set('Cache-Control', 'private, no-cache').send(page('Your account', '')))
  app.post('/cart', (req, res) => res.status(201).json({ added: true }))

  app.use((req, res) => res.status(404).send(page('Not found', '')))
  return app
}

module.exports = buildApp

if (require.main === module) {
  const createTracker = require('..')
  const redisUrl = process.env.REDIS_URL || process.env.REDISTOGO_URL
  const invl = createTracker({
    cf: { dist: process.env.CF_DIST || 'EXAMPLE' },
    ...(redisUrl ? { redis: { url: redisUrl } } : { store: 'memory://' })
  })
  const port = Number(process.env.PORT) || 3000
  const server = buildApp(invl).listen(port, '127.0.0.1', () => {
    console.log(`Listening on http://127.0.0.1:${port} (store: ${redisUrl ? 'Redis' : 'memory://'})`)
  })
  process.once('SIGINT', () => server.close(() => invl.disconnect()))
}
