'use strict';
// main.js and post.js as GitHub runs them: `node action/main.js` in a fresh
// process with the step's environment; and as @github/local-action loads them:
// as a module whose exported run() it awaits. A small shell script stands in for the
// binary and records what it was given, so these tests pin the shim's contract
// (arguments, environment passed through, state for post, exit code) on their own;
// the real binary runs under @github/local-action in the Rust integration tests.

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { describe, it, beforeEach, afterEach } = require('node:test');

const ACTION = path.resolve(__dirname, '..');

let work;
let record;

/**
 * A stand-in nixbucket that writes its arguments and two inputs to `record`,
 * then runs `body` (JavaScript). It is a Node script because /bin/sh (dash)
 * drops variables like INPUT_SIGNING-KEY whose names are not shell identifiers,
 * while a real binary sees them.
 */
function standIn(dir, body) {
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, 'nixbucket');
  fs.writeFileSync(
    file,
    [
      `#!${process.execPath}`,
      "const e = process.env;",
      `require('node:fs').writeFileSync(${JSON.stringify(record)}, [process.argv.slice(2).join(' '), e.INPUT_CACHE, e['INPUT_SIGNING-KEY']].join('\\n'));`,
      body,
      '',
    ].join('\n'),
    { mode: 0o755 },
  );
  return file;
}

function runPhase(phase, extraEnv) {
  return runNode([path.join(ACTION, `${phase}.js`)], extraEnv);
}

/** Runs node with `args` and the environment of a step (plus `extraEnv`). */
function runNode(args, extraEnv) {
  const env = {
    PATH: '/usr/bin:/bin',
    HOME: work,
    RUNNER_TEMP: path.join(work, 'temp'),
    RUNNER_TOOL_CACHE: path.join(work, 'tool-cache'),
    GITHUB_WORKSPACE: work,
    GITHUB_STATE: path.join(work, 'state'),
    INPUT_CACHE: 'file:///tmp/some-cache',
    'INPUT_SIGNING-KEY': 'test-1:c2VjcmV0',
    ...extraEnv,
  };
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete env[k];
  return spawnSync(process.execPath, args, { env, encoding: 'utf8' });
}

function recorded() {
  return fs.readFileSync(record, 'utf8').split('\n');
}

function sha256(file) {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/** The entries main wrote to GITHUB_STATE, as the runner hands them to post: STATE_<name>. */
function stateForPost() {
  const state = {};
  for (const line of fs.readFileSync(path.join(work, 'state'), 'utf8').split(os.EOL)) {
    if (!line) continue;
    const at = line.indexOf('=');
    state[`STATE_${line.slice(0, at)}`] = line.slice(at + 1);
  }
  return state;
}

/**
 * Runs main with `binary` as the input, as the job's first step, and returns
 * what the runner hands post; the record and the state file are then cleared
 * so that what post does shows on its own.
 */
function runMain(binary) {
  const result = runPhase('main', { INPUT_BINARY: binary });
  assert.equal(result.status, 0, result.stdout + result.stderr);
  const state = stateForPost();
  fs.rmSync(record, { force: true });
  fs.writeFileSync(path.join(work, 'state'), '');
  return state;
}

/** A stand-in that exits 0 in main and `postCode` in post. */
function standInFor(postCode) {
  return standIn(path.join(work, 'bin'), `process.exit(process.argv[3] === 'post' ? ${postCode} : 0)`);
}

beforeEach(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'shim-phase-'));
  record = path.join(work, 'record');
  fs.writeFileSync(path.join(work, 'state'), '');
});

afterEach(() => fs.rmSync(work, { recursive: true, force: true }));

describe('main', () => {
  it('runs `github-action main` with the inputs and exits with its code', () => {
    const binary = standIn(path.join(work, 'bin'), 'process.exit(7)');
    const result = runPhase('main', { INPUT_BINARY: binary });
    assert.equal(result.status, 7, result.stdout + result.stderr);
    assert.deepEqual(recorded().slice(0, 3), ['github-action main', 'file:///tmp/some-cache', 'test-1:c2VjcmV0']);
  });

  it('runs a private copy of the binary and tells post its path and SHA-256 through GITHUB_STATE', () => {
    const binary = standIn(path.join(work, 'bin'), 'process.exit(0)');
    const result = runPhase('main', { INPUT_BINARY: binary });
    assert.equal(result.status, 0, result.stdout + result.stderr);
    const state = fs.readFileSync(path.join(work, 'state'), 'utf8').split(os.EOL);
    assert.equal(state.length, 3, state.join('|'));
    assert.equal(state[2], '');
    const copy = state[0].replace(/^shim-binary=/, '');
    assert.equal(state[1], `shim-binary-sha256=${sha256(binary)}`);
    assert.notEqual(copy, binary);
    assert.equal(path.dirname(path.dirname(copy)), path.join(work, 'temp'), 'the copy is not in RUNNER_TEMP');
    assert.deepEqual(fs.readFileSync(copy), fs.readFileSync(binary));
    assert.equal(fs.statSync(path.dirname(copy)).mode & 0o777, 0o700);
    assert.equal(fs.statSync(copy).mode & 0o222, 0, 'the copy is writable');
    assert.equal(recorded()[0], 'github-action main');
  });

  it('resolves a relative binary input against the workspace', () => {
    standIn(path.join(work, 'target', 'release'), 'process.exit(0)');
    const result = runPhase('main', { INPUT_BINARY: 'target/release/nixbucket' });
    assert.equal(result.status, 0, result.stdout + result.stderr);
    assert.equal(recorded()[0], 'github-action main');
  });

  it('uses nixbucket from PATH when no binary is given', () => {
    const dir = path.join(work, 'on-path');
    standIn(dir, 'process.exit(0)');
    const result = runPhase('main', { PATH: `${dir}:/usr/bin:/bin` });
    assert.equal(result.status, 0, result.stdout + result.stderr);
    assert.equal(recorded()[0], 'github-action main');
  });

  it('fails the step with an error annotation when the binary input is wrong', () => {
    const result = runPhase('main', { INPUT_BINARY: path.join(work, 'missing') });
    assert.equal(result.status, 1);
    assert.match(result.stdout, /^::error::nixbucket: the binary input names .*missing, which is not an executable file$/m);
    assert.equal(fs.existsSync(record), false);
  });

  it('reports a binary killed by a signal as 128+n', () => {
    const binary = standIn(path.join(work, 'bin'), "process.kill(process.pid, 'SIGTERM')");
    const result = runPhase('main', { INPUT_BINARY: binary });
    assert.equal(result.status, 128 + os.constants.signals.SIGTERM);
  });
});

describe('post', () => {
  it('runs `github-action post` with the copy main ran, then removes it', () => {
    const state = runMain(standInFor(0));
    const result = runPhase('post', state);
    assert.equal(result.status, 0, result.stdout + result.stderr);
    assert.deepEqual(recorded().slice(0, 3), ['github-action post', 'file:///tmp/some-cache', 'test-1:c2VjcmV0']);
    assert.equal(fs.readFileSync(path.join(work, 'state'), 'utf8'), '', 'post must not write shim state');
    assert.equal(fs.existsSync(path.dirname(state['STATE_shim-binary'])), false, 'the copy is left behind');
  });

  it('propagates a failing post so the job shows it', () => {
    assert.equal(runPhase('post', runMain(standInFor(3))).status, 3);
  });

  it('runs what main ran even when the build replaced the original', () => {
    const binary = standInFor(0);
    const state = runMain(binary);
    // The job's build rebuilt the binary the input names (a target/release/nixbucket).
    fs.writeFileSync(binary, `#!${process.execPath}\nprocess.exit(9)\n`);
    const result = runPhase('post', state);
    assert.equal(result.status, 0, result.stdout + result.stderr);
    assert.equal(recorded()[0], 'github-action post');
  });

  it('refuses a binary changed after main: never starts it, fails the step, names both digests', () => {
    const binary = standInFor(0);
    const state = runMain(binary);
    const copy = state['STATE_shim-binary'];
    const stolen = path.join(work, 'stolen');
    // What the job's build could do as the same user: write its own program over the copy.
    fs.chmodSync(copy, 0o700);
    fs.writeFileSync(
      copy,
      `#!${process.execPath}\nrequire('node:fs').writeFileSync(${JSON.stringify(stolen)}, process.env['INPUT_SIGNING-KEY']);\n`,
    );
    const result = runPhase('post', state);
    assert.equal(result.status, 1, result.stdout + result.stderr);
    assert.equal(fs.existsSync(stolen), false, 'the replaced binary ran');
    const errors = result.stdout.split(/\r?\n/).filter((l) => l.startsWith('::error::'));
    assert.equal(errors.length, 1, result.stdout);
    assert.match(
      errors[0],
      new RegExp(
        `^::error::nixbucket: refusing to run ${copy} in the post step: ${copy} has SHA-256 ${sha256(copy)}, ` +
          `but the main step ran ${sha256(binary)}\\. .*it is not started and gets no signing key$`,
      ),
    );
    assert.doesNotMatch(result.stdout + result.stderr, /c2VjcmV0/);
  });

  it('refuses when the copy main ran is gone, and takes no other binary from PATH', () => {
    const state = runMain(standInFor(0));
    fs.rmSync(path.dirname(state['STATE_shim-binary']), { recursive: true, force: true });
    const onPath = path.join(work, 'on-path');
    standIn(onPath, 'process.exit(0)');
    const result = runPhase('post', { ...state, PATH: `${onPath}:/usr/bin:/bin` });
    assert.equal(result.status, 1, result.stdout + result.stderr);
    assert.match(result.stdout, /^::error::nixbucket: refusing to run .* cannot be read \(ENOENT\)/m);
    assert.equal(fs.existsSync(record), false, 'a binary ran');
  });

  it('runs no binary when main recorded none, not even one on PATH', () => {
    const onPath = path.join(work, 'on-path');
    standIn(onPath, 'process.exit(0)');
    const result = runPhase('post', { PATH: `${onPath}:/usr/bin:/bin` });
    assert.equal(result.status, 0, result.stdout + result.stderr);
    assert.match(result.stdout, /^::warning::nixbucket: nothing pushed: the main step started no nixbucket binary/m);
    assert.equal(fs.existsSync(record), false, 'a binary ran');
  });
});

describe('as a module', () => {
  it('starts nothing when main.js or post.js is only required', () => {
    const binary = standIn(path.join(work, 'bin'), 'process.exit(0)');
    const script = `require(${JSON.stringify(path.join(ACTION, 'main.js'))}); require(${JSON.stringify(path.join(ACTION, 'post.js'))});`;
    const result = runNode(['-e', script], { INPUT_BINARY: binary, 'STATE_shim-binary': binary });
    assert.equal(result.status, 0, result.stdout + result.stderr);
    assert.equal(fs.existsSync(record), false, 'the binary ran');
    assert.equal(fs.readFileSync(path.join(work, 'state'), 'utf8'), '');
  });

  for (const phase of ['main', 'post']) {
    it(`${phase}.js: run() resolves to the binary's exit code once the binary has exited`, () => {
      const marks = path.join(work, 'marks');
      const binary = standIn(
        path.join(work, 'bin'),
        `if (process.argv[3] === '${phase}') { require('node:fs').appendFileSync(${JSON.stringify(marks)}, 'binary exits\\n'); process.exit(5); }`,
      );
      const script = [
        "const fs = require('node:fs');",
        `const { run } = require(${JSON.stringify(path.join(ACTION, `${phase}.js`))});`,
        `run().then((code) => fs.appendFileSync(${JSON.stringify(marks)}, \`run() resolved to \${code}\\n\`));`,
      ].join('\n');
      const state = phase === 'post' ? runMain(binary) : {};
      const result = runNode(['-e', script], { INPUT_BINARY: binary, ...state });
      assert.equal(result.status, 5, result.stdout + result.stderr);
      assert.equal(recorded()[0], `github-action ${phase}`);
      assert.equal(fs.readFileSync(marks, 'utf8'), 'binary exits\nrun() resolved to 5\n');
    });
  }
});
