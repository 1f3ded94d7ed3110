import createTracker from './index.js'

export const { Tracker, Store, MAX_URL_LENGTH } = createTracker
export const invalidateS3Event = (...args) => createTracker.invalidateS3Event(...args)
export const findDistributionByOrigin = (...args) => createTracker.findDistributionByOrigin(...args)
export { createTracker }
export default createTracker
