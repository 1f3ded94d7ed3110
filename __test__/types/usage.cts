// How the README uses the package from CommonJS, checked against index.d.ts by __test__/types.test.js.
import createTracker = require('cf-invalidation-tracker')
import http = require('node:http')

const invl = createTracker({ cf: { dist: 'E1' }, redis: { url: 'redis://127.0.0.1:6379', prefix: 'app' } })
const memory: createTracker.Tracker = createTracker({ cf: { dist: 'E1' }, store: 'memory' })
createTracker({ cf: { dist: 'E1' }, redis: { port: process.env.REDIS_PORT ?? 6379, hostname: '127.0.0.1' } })
createTracker({ cf: { dist: 'E1' }, redis: { url: 'rediss://redis.internal:6380', tls: { ca: '-----BEGIN CERTIFICATE-----…' } } })
createTracker({ cf: { dist: 'E1' }, redis: { host: 'redis.internal', port: 6380, tls: true } })
createTracker({ cf: { dist: 'E1' }, redis: { cluster: ['redis://node-1:6379', 'redis://node-2:6379'], prefix: 'app' } })
createTracker({ cf: { dist: 'E1' }, redis: { url: 'rediss://config.cache.amazonaws.com:6379', cluster: true } })
createTracker({ cf: { dist: 'E1' }, redis: { sentinel: { name: 'cache', nodes: ['redis://sentinel-1:26379'], db: 2 }, password: 'p' } })
createTracker({ cf: { dist: 'E1' }, redis: { url: 'rediss://r:6380', tls: { ca: [Buffer.from('')], cert: 'PEM', key: Buffer.from('') } } })
createTracker({ cf: { dist: 'E1' }, redis: { url: process.env.REDIS_URL ?? 'rediss://r:6380', tls: { rejectUnauthorized: false } } })
const limit: number = createTracker.MAX_URL_LENGTH

async function main (): Promise<void> {
  await invl.storeUrl('/a.html')
  await invl.storeUrl('/b.html', 60)
  await invl.storeUrl('/images/', { wildcard: true })
  await invl.setUrlTTL('/a.html', 0)
  await invl.removeUrl('/b.html')
  await invl.removeUrl('/css/', { wildcard: true })
  const urls: string[] = await memory.listUrls()
  const report = await invl.sendInvalidation({ wait: true })
  const rejected: string[] = report.rejected
  const kept: number = report.kept
  const statuses: string[] = report.batches.map((b) => b.status)
  try {
    await invl.sendInvalidation({ dryRun: true })
  } catch (err) {
    const failed = err as createTracker.SendError
    console.log(failed.code, failed.report.kept)
  }
  console.log(urls, limit, rejected, kept, statuses)
}

const server = http.createServer((req, res) => {
  invl.middleware({ ttl: (r: http.IncomingMessage) => (r.url === '/' ? 60 : 0) })(req, res, () => res.end('ok'))
})

class RedisLikeStore extends createTracker.Store {
  keys = new Set<string>()
  set (key: string): void { this.keys.add(key) }
  getAllKeys (callback: (err: Error | null, keys?: string[]) => void): void { callback(null, [...this.keys]) }
  clearAll (): void { this.keys.clear() }
}
createTracker({ cf: { dist: 'E1' }, store: new RedisLikeStore() })

// @ts-expect-error a store is 'memory://', 'memory' or an object
createTracker({ cf: { dist: 'E1' }, store: 'mongo://' })
// @ts-expect-error the distribution is required
createTracker({ cf: {}, store: 'memory://' })
// @ts-expect-error a client certificate needs its key
createTracker({ cf: { dist: 'E1' }, redis: { url: 'rediss://r:6380', tls: { cert: 'PEM' } } })
// @ts-expect-error cluster nodes are URLs
createTracker({ cf: { dist: 'E1' }, redis: { cluster: [{ host: 'node-1', port: 6379 }] } })
// @ts-expect-error a Sentinel's master needs its name
createTracker({ cf: { dist: 'E1' }, redis: { sentinel: { nodes: ['redis://sentinel-1:26379'] } } })
// @ts-expect-error dryRun is a boolean
void invl.sendInvalidation({ dryRun: 'true' })

void main
void server
// @ts-expect-error rejectUnauthorized is a boolean
createTracker({ cf: { dist: 'E1' }, redis: { url: 'rediss://r:6380', tls: { rejectUnauthorized: 'false' } } })
