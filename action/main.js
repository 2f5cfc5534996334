'use strict';
// The action's main step: runs before the job's build and configures the cache.
const { runPhase } = require('./shim.js');

/** Runs the step; resolves to its exit code once the binary has exited. */
function run() {
  return runPhase('main');
}

module.exports = { run };

// The runner starts the step as `node action/main.js`. A tool that loads the
// file as a module instead (such as @github/local-action) calls run() itself.
if (require.main === module) run();
