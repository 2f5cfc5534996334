'use strict';
// The action's post step: runs at job end, also after a failed build, and pushes.
require('./shim.js').runPhase('post');
