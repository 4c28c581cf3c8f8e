// The ES module face of the package (the same classes as `require('deep-recall')`).
import lib from './index.js'

export const {
  Memory,
  DeepRecallError,
  InvalidInputError,
  NotFoundError,
  ModelError,
  UnavailableError,
} = lib
export default lib
