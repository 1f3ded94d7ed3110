// The package from an ES module, checked against index.d.ts by __test__/types.test.js.
import createTracker, { Tracker, Store, MAX_URL_LENGTH, invalidateS3Event, findDistributionByOrigin } from 'cf-invalidation-tracker'

const invl: Tracker = createTracker({ cf: { dist: 'E1' }, store: 'memory://' })
await invl.storeUrl('/a.html')
const reports = await invalidateS3Event({ Records: [] }, { cf: { dist: 'E1' }, wait: false })
const id: string = await findDistributionByOrigin('bucket', { cf: {} })
console.log(reports.map((r) => [r.distribution, r.paths, r.rejected]), id)
await invalidateS3Event({ Records: [] }, { cf: { dist: 'E1' }, originPath: '/production' })
await invalidateS3Event({ source: 'aws.s3', 'detail-type': 'Object Created', detail: { bucket: { name: 'b' }, object: { key: 'a.jpg' } } }, { cf: {} })
// @ts-expect-error an origin path is a string
await invalidateS3Event({ Records: [] }, { cf: { dist: 'E1' }, originPath: true })
const origins: Array<[string, string]> = (await invl.listDistributions()).flatMap((d) => d.origins.map((o, i): [string, string] => [o, d.originPaths[i]]))
console.log(origins)

// A store in the original's callback style.
class CallbackStore extends Store {
  keys = new Set<string>()
  set (key: string, value: number, callback: (err?: Error | null) => void) { this.keys.add(key); callback(null) }
  getAllKeys (callback: (err: Error | null, keys?: string[]) => void) { callback(null, [...this.keys]) }
  clearAll (callback: (err?: Error | null) => void) { this.keys.clear(); callback(null) }
}
createTracker({ cf: { dist: 'E1' }, store: new CallbackStore() })
const longest: number = MAX_URL_LENGTH
console.log(longest)
