'use strict';
// The pure parts of the shim, the pinned release digests, and the downloader
// against a real HTTP server on 127.0.0.1 that serves release assets the way
// GitHub does (with a redirect).

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const { spawn, spawnSync } = require('node:child_process');
const { describe, it, before, after, beforeEach, afterEach } = require('node:test');

const shim = require('../shim.js');

const REPO_ROOT = path.resolve(__dirname, '..', '..');

describe('assetName', () => {
  const cases = [
    ['linux', 'x64', 'nixbucket-x86_64-unknown-linux-musl'],
    ['linux', 'arm64', 'nixbucket-aarch64-unknown-linux-musl'],
    ['darwin', 'x64', 'nixbucket-x86_64-apple-darwin'],
    ['darwin', 'arm64', 'nixbucket-aarch64-apple-darwin'],
  ];
  for (const [platform, arch, expected] of cases) {
    it(`names the ${platform}/${arch} asset ${expected}`, () => {
      assert.equal(shim.assetName(platform, arch), expected);
    });
  }

  it('refuses runners nixbucket is not built for', () => {
    assert.throws(() => shim.assetName('win32', 'x64'), /no nixbucket build for win32\/x64/);
    assert.throws(() => shim.assetName('linux', 'ia32'), /no nixbucket build for linux\/ia32/);
  });

  it('names exactly the assets release.yml uploads', () => {
    const release = fs.readFileSync(path.join(REPO_ROOT, '.github/workflows/release.yml'), 'utf8');
    for (const [platform, arch] of cases) {
      const triple = shim.targetTriple(platform, arch);
      assert.match(release, new RegExp(`target: ${triple}\\b`), `release.yml builds no ${triple}`);
    }
  });
});

describe('cargoPackageVersion', () => {
  it('reads the version of the package, not of a dependency', () => {
    const toml = [
      '[workspace]',
      'members = ["."]',
      '',
      '[dependencies]',
      'version = "9.9.9"',
      'serde = { version = "1" }',
      '',
      '[package]',
      'name = "nixbucket"',
      'version = "1.2.3"',
      '',
      '[dev-dependencies]',
      'version = "8.8.8"',
    ].join('\n');
    assert.equal(shim.cargoPackageVersion(toml), '1.2.3');
  });

  it("reads this project's own Cargo.toml", () => {
    const toml = fs.readFileSync(path.join(REPO_ROOT, 'Cargo.toml'), 'utf8');
    assert.match(shim.cargoPackageVersion(toml), /^\d+\.\d+\.\d+/);
  });

  it('handles CRLF line endings', () => {
    assert.equal(shim.cargoPackageVersion('[package]\r\nname = "x"\r\nversion = "0.4.0"\r\n'), '0.4.0');
  });

  it('refuses a manifest without a package version', () => {
    assert.throws(() => shim.cargoPackageVersion('[package]\nname = "x"\n'), /no \[package\] version/);
    assert.throws(() => shim.cargoPackageVersion('[package]\nversion.workspace = true\n'), /workspace/);
  });
});

describe('releaseFor', () => {
  it('downloads from the release named after the Cargo version', () => {
    assert.deepEqual(shim.releaseFor({ actionRepository: 'acme/nixbucket', version: '0.3.1' }), {
      repository: 'acme/nixbucket',
      tag: 'v0.3.1',
    });
  });

  it('has no release for an action used by path (uses: ./)', () => {
    assert.equal(shim.releaseFor({ actionRepository: '', version: '0.3.1' }), null);
    assert.equal(shim.releaseFor({ actionRepository: undefined, version: '0.3.1' }), null);
  });

  it('refuses a repository that is not owner/name', () => {
    for (const bad of ['../evil', 'acme/..', 'acme', 'acme/x/y']) {
      assert.throws(() => shim.releaseFor({ actionRepository: bad, version: '1.0.0' }), /not owner\/name/, bad);
    }
  });

  it('builds the download URL on the server GitHub names', () => {
    const release = { repository: 'acme/nixbucket', tag: 'v0.3.1' };
    assert.equal(
      shim.releaseAssetUrl(undefined, release, 'nixbucket-x86_64-apple-darwin'),
      'https://github.com/acme/nixbucket/releases/download/v0.3.1/nixbucket-x86_64-apple-darwin',
    );
    assert.equal(
      shim.releaseAssetUrl('https://ghe.example.com/', release, 'a'),
      'https://ghe.example.com/acme/nixbucket/releases/download/v0.3.1/a',
    );
  });
});

describe('release digests', () => {
  const hex = 'a'.repeat(64);
  let dir;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shim-digests-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));
  const table = (value) => {
    const file = path.join(dir, 'digests.json');
    fs.writeFileSync(file, typeof value === 'string' ? value : JSON.stringify(value));
    return file;
  };

  it("pins, in this checkout's table, only assets release.yml builds, each with a SHA-256", () => {
    const { releases } = shim.loadReleaseDigests();
    const known = new Set(
      ['linux-x64', 'linux-arm64', 'darwin-x64', 'darwin-arm64'].map((p) => shim.assetName(...p.split('-'))),
    );
    for (const [version, assets] of Object.entries(releases)) {
      assert.match(version, /^\d+\.\d+\.\d+/);
      for (const asset of Object.keys(assets)) assert.ok(known.has(asset), `${version}: unknown asset ${asset}`);
    }
  });

  it('finds the digest of one asset of one version, and nothing else', () => {
    const file = table({ releases: { '1.2.3': { 'nixbucket-x': hex } } });
    const digests = shim.loadReleaseDigests(file);
    assert.equal(shim.pinnedDigest(digests, '1.2.3', 'nixbucket-x'), hex);
    assert.equal(shim.pinnedDigest(digests, '1.2.4', 'nixbucket-x'), null);
    assert.equal(shim.pinnedDigest(digests, '1.2.3', 'nixbucket-y'), null);
    assert.equal(shim.pinnedDigest(digests, 'constructor', 'nixbucket-x'), null);
    assert.equal(shim.pinnedDigest(digests, '1.2.3', '__proto__'), null);
  });

  it('refuses a malformed table instead of reading it as empty', () => {
    const cases = [
      ['not json', /cannot read the release digests/],
      [{}, /no "releases" object/],
      [{ releases: [] }, /no "releases" object/],
      [{ releases: { '1.0.0': 'x' } }, /release 1\.0\.0 is not an object/],
      [{ releases: { '1.0.0': { 'nixbucket-x': hex.toUpperCase() } } }, /1\.0\.0 nixbucket-x is not a lower-case SHA-256/],
      [{ releases: { '1.0.0': { 'nixbucket-x': `${hex}  nixbucket-x` } } }, /is not a lower-case SHA-256/],
    ];
    for (const [content, message] of cases) {
      assert.throws(() => shim.loadReleaseDigests(table(content)), message, JSON.stringify(content));
    }
    assert.throws(() => shim.loadReleaseDigests(path.join(dir, 'missing.json')), /cannot read the release digests/);
  });
});

describe('exitCodeOf', () => {
  it('passes exit codes through and maps signals to 128+n', () => {
    assert.equal(shim.exitCodeOf(0, null), 0);
    assert.equal(shim.exitCodeOf(3, null), 3);
    assert.equal(shim.exitCodeOf(null, 'SIGTERM'), 128 + os.constants.signals.SIGTERM);
    assert.equal(shim.exitCodeOf(null, null), 1);
  });
});

describe('escapeData', () => {
  it('keeps a message from ending its workflow command', () => {
    assert.equal(shim.escapeData('50%\r\n::error::x'), '50%25%0D%0A::error::x');
  });
});

describe('findOnPath', () => {
  it('skips a file that is not executable', () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'shim-path-'));
    const plain = path.join(root, 'plain');
    const exec = path.join(root, 'exec');
    fs.mkdirSync(plain);
    fs.mkdirSync(exec);
    fs.writeFileSync(path.join(plain, 'nixbucket'), 'not runnable', { mode: 0o644 });
    fs.writeFileSync(path.join(exec, 'nixbucket'), '#!/bin/sh\n', { mode: 0o755 });
    const pathVar = ['', plain, exec].join(path.delimiter);
    assert.equal(shim.findOnPath('nixbucket', pathVar), path.join(exec, 'nixbucket'));
    assert.equal(shim.findOnPath('nixbucket', plain), null);
    fs.rmSync(root, { recursive: true });
  });
});

/** Runs node with `args` without blocking this process, which serves the downloads. */
function runNode(args, env) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

describe('stageBinary', () => {
  it('stages the bytes whose digest was checked, not the file read again', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nixbucket-stage-'));
    try {
      const checked = Buffer.from('#!/bin/sh\necho checked\n');
      const binary = path.join(dir, 'nixbucket');
      // Another user of a shared tool cache swapped the file after the check.
      fs.writeFileSync(binary, '#!/bin/sh\necho swapped\n', { mode: 0o755 });
      const staged = shim.stageBinary(binary, { RUNNER_TEMP: dir }, checked);
      assert.deepEqual(fs.readFileSync(staged.binary), checked);
      assert.equal(staged.digest, crypto.createHash('sha256').update(checked).digest('hex'));
      // Without checked bytes (a binary input, one on PATH) the file is what is staged.
      const plain = shim.stageBinary(binary, { RUNNER_TEMP: dir });
      assert.deepEqual(fs.readFileSync(plain.binary), fs.readFileSync(binary));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

/**
 * The static release binary: the one scripts/test.sh built for the whole run
 * ($NIXBUCKET_RELEASE_BINARY), else built now by the script release.yml runs.
 */
function releaseBinary() {
  if (process.env.NIXBUCKET_RELEASE_BINARY) return process.env.NIXBUCKET_RELEASE_BINARY;
  const built = spawnSync(path.join(REPO_ROOT, 'scripts', 'build-release.sh'), [], {
    cwd: REPO_ROOT,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  assert.equal(built.status, 0, `scripts/build-release.sh failed:\n${built.stderr}${built.error || ''}`);
  return built.stdout.trim().split('\n').pop();
}

describe('release downloads', () => {
  const REPO_VERSION = shim.cargoPackageVersion(fs.readFileSync(path.join(REPO_ROOT, 'Cargo.toml'), 'utf8'));
  const asset = shim.assetName('linux', 'x64');
  let work;
  let server;
  let base;
  let requests;
  /** url → [status, body] or [302, location]; what the test's release server answers. */
  let routes;

  /** A release binary that leaves a mark when it runs. */
  const fakeBinary = (mark) =>
    Buffer.from(`#!${process.execPath}\nrequire('node:fs').writeFileSync(${JSON.stringify(mark)}, process.argv.slice(2).join(' '));\n`);
  const sha256 = (bytes) => crypto.createHash('sha256').update(bytes).digest('hex');
  const releasePath = `/acme/nixbucket/releases/download/v${REPO_VERSION}/${asset}`;

  before(async () => {
    server = http.createServer((req, res) => {
      requests.push(req.url);
      const route = routes[req.url];
      if (!route) {
        res.writeHead(404).end('Not Found');
      } else if (route[0] === 302) {
        res.writeHead(302, { location: route[1] }).end();
      } else {
        res.writeHead(route[0]).end(route[1]);
      }
    });
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${server.address().port}`;
  });
  after(() => server.close());
  beforeEach(() => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'shim-release-'));
    requests = [];
    routes = {};
  });
  afterEach(() => fs.rmSync(work, { recursive: true, force: true }));

  /** A runner's environment in which the action comes from acme/nixbucket and nothing is on PATH. */
  const env = (extra) => ({
    PATH: path.join(work, 'empty-path'),
    GITHUB_ACTION_REPOSITORY: 'acme/nixbucket',
    GITHUB_SERVER_URL: base,
    GITHUB_STATE: path.join(work, 'state'),
    GITHUB_WORKSPACE: work,
    RUNNER_TEMP: path.join(work, 'temp'),
    RUNNER_TOOL_CACHE: path.join(work, 'tool-cache'),
    ...extra,
  });
  const cached = () => path.join(work, 'tool-cache', 'nixbucket', REPO_VERSION, 'x64', 'nixbucket');

  /** resolveBinary for linux/x64 in a child process, with `digests` as the pinned table. */
  function resolve(digests) {
    const file = path.join(work, 'digests.json');
    fs.writeFileSync(file, JSON.stringify({ releases: digests }));
    const script = [
      `const shim = require(${JSON.stringify(path.join(REPO_ROOT, 'action', 'shim.js'))});`,
      `shim.resolveBinary(process.env, { platform: 'linux', arch: 'x64', digestsFile: ${JSON.stringify(file)} })`,
      "  .then((binary) => console.log(`resolved ${binary}`), (err) => { console.log(`failed: ${err.message}`); process.exitCode = 1; });",
    ].join('\n');
    return runNode(['-e', script], env());
  }

  it('downloads a pinned release binary, checks it, and reuses the cached copy only while it matches', async () => {
    const body = fakeBinary(path.join(work, 'ran'));
    // Like GitHub: the release URL redirects to where the bytes are stored.
    routes = { [releasePath]: [302, '/storage/binary'], '/storage/binary': [200, body] };
    const pins = { [REPO_VERSION]: { [asset]: sha256(body) } };

    const first = await resolve(pins);
    assert.equal(first.status, 0, first.stdout + first.stderr);
    assert.match(first.stdout, new RegExp(`^Downloaded ${asset} from release v${REPO_VERSION} of acme/nixbucket \\(SHA-256 as pinned\\)$`, 'm'));
    assert.match(first.stdout, new RegExp(`^resolved ${cached()}$`, 'm'));
    assert.deepEqual(fs.readFileSync(cached()), body);
    assert.ok(fs.statSync(cached()).mode & 0o100, 'downloaded binary is not executable');
    assert.deepEqual(requests, [releasePath, '/storage/binary'], 'no .sha256 is fetched');

    const second = await resolve(pins);
    assert.match(second.stdout, new RegExp(`^resolved ${cached()}$`, 'm'));
    assert.equal(requests.length, 2, 'a cached binary that matches its pin is not downloaded again');

    // Another job on a self-hosted runner wrote over the tool cache.
    fs.writeFileSync(cached(), fakeBinary(path.join(work, 'other')), { mode: 0o755 });
    const third = await resolve(pins);
    assert.match(third.stdout, new RegExp(`^resolved ${cached()}$`, 'm'));
    assert.equal(requests.length, 4, 'a cached binary that no longer matches was used');
    assert.deepEqual(fs.readFileSync(cached()), body);
  });

  it('downloads the real static binary scripts/build-release.sh builds, which then runs', async () => {
    const body = fs.readFileSync(releaseBinary());
    routes = { [releasePath]: [302, '/storage/binary'], '/storage/binary': [200, body] };
    const result = await resolve({ [REPO_VERSION]: { [asset]: sha256(body) } });
    assert.equal(result.status, 0, result.stdout + result.stderr);
    assert.match(result.stdout, new RegExp(`^resolved ${cached()}$`, 'm'));
    assert.deepEqual(requests, [releasePath, '/storage/binary']);
    assert.deepEqual(fs.readFileSync(cached()), body);
    const ran = spawnSync(cached(), ['--version'], { encoding: 'utf8' });
    assert.equal(ran.status, 0, `${cached()} --version: ${ran.stderr}${ran.error || ''}`);
    assert.equal(ran.stdout.trim(), `nixbucket ${REPO_VERSION}`);
  });

  it('refuses a release binary whose digest is not pinned for this version, without downloading it', async () => {
    const body = fakeBinary(path.join(work, 'ran'));
    routes = { [releasePath]: [200, body], [`${releasePath}.sha256`]: [200, `${sha256(body)}  ${asset}\n`] };
    const result = await resolve({ '0.0.1': { [asset]: sha256(body) } });
    assert.equal(result.status, 1, result.stdout + result.stderr);
    assert.match(
      result.stdout,
      new RegExp(
        `^::notice::this action pins no SHA-256 for ${asset} of v${REPO_VERSION} in action/release-digests.json, ` +
          'so the release binary is not downloaded; building nixbucket from source$',
        'm',
      ),
    );
    assert.match(result.stdout, new RegExp(`^failed: no nixbucket binary: .* no release binary for v${REPO_VERSION} whose digest this action pins, and no cargo`, 'm'));
    assert.deepEqual(requests, []);
    assert.equal(fs.existsSync(cached()), false);
  });

  it('refuses bytes that do not match the pinned digest, and keeps none', async () => {
    const body = fakeBinary(path.join(work, 'ran'));
    routes = { [releasePath]: [200, body] };
    const pinned = 'b'.repeat(64);
    const result = await resolve({ [REPO_VERSION]: { [asset]: pinned } });
    assert.equal(result.status, 1, result.stdout + result.stderr);
    assert.match(
      result.stdout,
      new RegExp(`^failed: ${base}${releasePath} has SHA-256 ${sha256(body)}, but this action pins ${pinned} for it \\(action/release-digests.json\\); it is not run$`, 'm'),
    );
    const dir = path.dirname(cached());
    assert.deepEqual(fs.existsSync(dir) ? fs.readdirSync(dir) : [], [], 'a refused download was kept');
  });

  it('builds from source when a pinned release has no such asset', async () => {
    const result = await resolve({ [REPO_VERSION]: { [asset]: 'c'.repeat(64) } });
    assert.equal(result.status, 1, result.stdout + result.stderr);
    assert.match(result.stdout, new RegExp(`^::notice::release v${REPO_VERSION} of acme/nixbucket has no ${asset}; building nixbucket from source$`, 'm'));
    assert.match(result.stdout, /^failed: no nixbucket binary: .* and no cargo/m);
    assert.deepEqual(requests, [releasePath]);
  });

  it("main.js with this checkout's table never runs a release binary it does not pin", async () => {
    // A release whose binary and .sha256 agree, as anyone who could upload to it would make them.
    const mark = path.join(work, 'ran');
    const body = fakeBinary(mark);
    const ours = shim.assetName(process.platform, process.arch);
    const ourPath = `/acme/nixbucket/releases/download/v${REPO_VERSION}/${ours}`;
    routes = { [ourPath]: [200, body], [`${ourPath}.sha256`]: [200, `${sha256(body)}  ${ours}\n`] };
    fs.writeFileSync(path.join(work, 'state'), '');
    const result = await runNode([path.join(REPO_ROOT, 'action', 'main.js')], env({ 'INPUT_SIGNING-KEY': 'test-1:c2VjcmV0' }));
    assert.equal(result.status, 1, result.stdout + result.stderr);
    assert.equal(fs.existsSync(mark), false, 'the release binary ran');
    assert.match(result.stdout, /^::error::nixbucket: /m);
    assert.match(result.stdout, /action\/release-digests\.json/);
    assert.equal(fs.readFileSync(path.join(work, 'state'), 'utf8'), '');
  });
});
