'use strict';
// The action's post step: runs at job end, also after a failed build, and pushes.
const { runPhase } = require('./shim.js');

/** Runs the step; resolves to its exit code once the binary has exited. */
function run() {
  return runPhase('post');
}

module.exports = { run };

// The runner starts the step as `node action/post.js`. A tool that loads the
// file as a module instead (such as @github/local-action) calls run() itself.
if (require.main === module) run();
