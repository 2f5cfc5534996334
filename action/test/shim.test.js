'use strict';
// The pure parts of the shim, and its downloader against a real HTTP server on
// 127.0.0.1 that serves release assets the way GitHub does (with a redirect).

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const { describe, it, before, after } = require('node:test');

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

describe('parseSha256File', () => {
  const hex = 'a'.repeat(64);
  it('reads sha256sum, shasum and bare formats', () => {
    assert.equal(shim.parseSha256File(`${hex}  nixbucket-x\n`, 'nixbucket-x'), hex);
    assert.equal(shim.parseSha256File(`${hex} *dist/nixbucket-x\n`, 'nixbucket-x'), hex);
    assert.equal(shim.parseSha256File(`${hex.toUpperCase()}\n`, 'nixbucket-x'), hex);
  });

  it('refuses a checksum of another file or a malformed one', () => {
    assert.throws(() => shim.parseSha256File(`${hex}  other\n`, 'nixbucket-x'), shim.ChecksumError);
    assert.throws(() => shim.parseSha256File('abc  nixbucket-x\n', 'nixbucket-x'), shim.ChecksumError);
    assert.throws(() => shim.parseSha256File('', 'nixbucket-x'), shim.ChecksumError);
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

describe('downloadVerified', () => {
  const asset = 'nixbucket-x86_64-unknown-linux-musl';
  const body = Buffer.from('#!/bin/sh\necho release binary\n');
  const digest = crypto.createHash('sha256').update(body).digest('hex');
  let server;
  let base;
  const requests = [];

  before(async () => {
    // Like GitHub: the release URL redirects to where the bytes are stored.
    server = http.createServer((req, res) => {
      requests.push(req.url);
      const routes = {
        '/good/nixbucket': [302, null, '/storage/good-binary'],
        '/good/nixbucket.sha256': [200, `${digest}  ${asset}\n`],
        '/storage/good-binary': [200, body],
        '/tampered/nixbucket': [200, Buffer.from('something else')],
        '/tampered/nixbucket.sha256': [200, `${digest}  ${asset}\n`],
      };
      const route = routes[req.url];
      if (!route) {
        res.writeHead(404).end('Not Found');
      } else if (route[0] === 302) {
        res.writeHead(302, { location: route[2] }).end();
      } else {
        res.writeHead(200).end(route[1]);
      }
    });
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${server.address().port}`;
  });

  after(() => server.close());

  it('follows the redirect, checks the digest and leaves an executable', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shim-dl-'));
    const binary = await shim.downloadVerified(`${base}/good/nixbucket`, asset, dir);
    assert.equal(binary, path.join(dir, 'nixbucket'));
    assert.deepEqual(fs.readFileSync(binary), body);
    assert.ok(fs.statSync(binary).mode & 0o100, 'downloaded binary is not executable');
    assert.ok(requests.includes('/storage/good-binary'));
    fs.rmSync(dir, { recursive: true });
  });

  it('refuses bytes that do not match the published digest and keeps none', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shim-dl-'));
    await assert.rejects(shim.downloadVerified(`${base}/tampered/nixbucket`, asset, dir), (err) => {
      assert.ok(err instanceof shim.ChecksumError);
      assert.match(err.message, new RegExp(`expected ${digest}`));
      return true;
    });
    assert.deepEqual(fs.readdirSync(dir), []);
    fs.rmSync(dir, { recursive: true });
  });

  it('reports an unreleased version as missing, not as an error', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shim-dl-'));
    assert.equal(await shim.downloadVerified(`${base}/v9.9.9/nixbucket`, asset, dir), null);
    fs.rmSync(dir, { recursive: true });
  });
});
