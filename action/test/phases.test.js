'use strict';
// main.js and post.js as GitHub runs them: `node action/main.js` in a fresh
// process with the step's environment; and as @github/local-action loads them:
// as a module whose exported run() it awaits. A small shell script stands in for the
// binary and records what it was given, so these tests pin the shim's contract
// (arguments, environment passed through, state for post, exit code) on their own;
// the real binary runs under @github/local-action in the Rust integration tests.

const assert = require('node:assert/strict');
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

  it('tells post which binary it ran through GITHUB_STATE', () => {
    const binary = standIn(path.join(work, 'bin'), 'process.exit(0)');
    const result = runPhase('main', { INPUT_BINARY: binary });
    assert.equal(result.status, 0, result.stdout + result.stderr);
    assert.equal(fs.readFileSync(path.join(work, 'state'), 'utf8'), `shim-binary=${binary}${os.EOL}`);
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
  it('runs `github-action post` with the binary main recorded', () => {
    const binary = standIn(path.join(work, 'bin'), 'process.exit(0)');
    const result = runPhase('post', { 'STATE_shim-binary': binary });
    assert.equal(result.status, 0, result.stdout + result.stderr);
    assert.deepEqual(recorded().slice(0, 3), ['github-action post', 'file:///tmp/some-cache', 'test-1:c2VjcmV0']);
    assert.equal(fs.readFileSync(path.join(work, 'state'), 'utf8'), '', 'post must not write shim state');
  });

  it('propagates a failing post so the job shows it', () => {
    const binary = standIn(path.join(work, 'bin'), 'process.exit(3)');
    assert.equal(runPhase('post', { 'STATE_shim-binary': binary }).status, 3);
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
        `require('node:fs').appendFileSync(${JSON.stringify(marks)}, 'binary exits\\n'); process.exit(5);`,
      );
      const script = [
        "const fs = require('node:fs');",
        `const { run } = require(${JSON.stringify(path.join(ACTION, `${phase}.js`))});`,
        `run().then((code) => fs.appendFileSync(${JSON.stringify(marks)}, \`run() resolved to \${code}\\n\`));`,
      ].join('\n');
      const result = runNode(['-e', script], { INPUT_BINARY: binary });
      assert.equal(result.status, 5, result.stdout + result.stderr);
      assert.equal(recorded()[0], `github-action ${phase}`);
      assert.equal(fs.readFileSync(marks, 'utf8'), 'binary exits\nrun() resolved to 5\n');
    });
  }
});
