'use strict';
// The action's main step: runs before the job's build and configures the cache.
require('./shim.js').runPhase('main');
