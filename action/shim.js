'use strict';
// The action's JavaScript does one thing: put a nixbucket binary within reach
// and run `nixbucket github-action main|post` with the step's environment,
// exiting with its code. Everything the action means (inputs, state, outputs,
// masking, the summary) lives in the Rust binary, so that it is tested once and
// behaves the same as the CLI. Only node: built-ins are used: an action's
// JavaScript runs from the checked-out repository, with no npm install.

const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const https = require('node:https');
const os = require('node:os');
const path = require('node:path');
const { spawn, spawnSync } = require('node:child_process');

/** The action's own source tree: action.yml and Cargo.toml sit one level up. */
const ACTION_DIR = path.resolve(__dirname, '..');

/** The state entries in which `main` tells `post` which binary it ran, and its SHA-256. */
const BINARY_STATE = 'shim-binary';
const DIGEST_STATE = 'shim-binary-sha256';

/**
 * The SHA-256 of each release binary the shim may download, pinned in the
 * action's own source: a workflow that pins the action to a commit pins the
 * binaries with it, and a checksum served from the same place as the binary
 * would vouch for whatever was put there.
 */
const RELEASE_DIGESTS = path.join(__dirname, 'release-digests.json');

const TARGETS = {
  'linux-x64': 'x86_64-unknown-linux-musl',
  'linux-arm64': 'aarch64-unknown-linux-musl',
  'darwin-x64': 'x86_64-apple-darwin',
  'darwin-arm64': 'aarch64-apple-darwin',
};

/** The Rust target triple that release.yml builds for a Node platform and arch. */
function targetTriple(platform, arch) {
  const triple = TARGETS[`${platform}-${arch}`];
  if (!triple) {
    throw new Error(
      `no nixbucket build for ${platform}/${arch}: Nix runners are Linux or macOS on x64 or arm64`,
    );
  }
  return triple;
}

/** The release asset name for a platform and arch. */
function assetName(platform, arch) {
  return `nixbucket-${targetTriple(platform, arch)}`;
}

/**
 * The `version` of the `[package]` table of a Cargo.toml. The release tag the
 * shim downloads from is `v<version>`, so the binary matches the source this
 * JavaScript came from, whichever ref (tag, branch or commit) the workflow used.
 */
function cargoPackageVersion(cargoToml) {
  let table = null;
  for (const raw of cargoToml.split(/\r?\n/)) {
    const line = raw.replace(/^\s+|\s+$/g, '');
    const header = /^\[([^\]]+)\]$/.exec(line);
    if (header) {
      table = header[1].trim();
      continue;
    }
    if (table !== 'package') continue;
    const version = /^version\s*=\s*"([^"]+)"/.exec(line);
    if (version) return version[1];
    if (/^version\s*\.\s*workspace\s*=/.test(line)) {
      throw new Error('Cargo.toml takes its version from a workspace; the shim needs it spelled out');
    }
  }
  throw new Error('Cargo.toml has no [package] version');
}

/**
 * Which GitHub release holds the binary for this action, or null when there is
 * none to download: an action used by path (`uses: ./`) has no repository of
 * its own in the environment and is built from the checked-out source instead.
 */
function releaseFor({ actionRepository, version }) {
  if (!actionRepository) return null;
  if (!/^[A-Za-z0-9][A-Za-z0-9-]*\/(?!\.\.?$)[A-Za-z0-9_.-]+$/.test(actionRepository)) {
    throw new Error(`GITHUB_ACTION_REPOSITORY is not owner/name: ${actionRepository}`);
  }
  return { repository: actionRepository, tag: `v${version}` };
}

function releaseAssetUrl(serverUrl, { repository, tag }, asset) {
  const base = (serverUrl || 'https://github.com').replace(/\/+$/, '');
  return `${base}/${repository}/releases/download/${encodeURIComponent(tag)}/${asset}`;
}

/**
 * Reads and checks a release digest table: `{ "releases": { "<version>":
 * { "<asset>": "<sha256 hex>" } } }`. A malformed table is an error, never an
 * empty one: it would quietly turn every download into a build from source.
 */
function loadReleaseDigests(file = RELEASE_DIGESTS) {
  let table;
  try {
    table = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new Error(`cannot read the release digests ${file}: ${err.message}`);
  }
  const releases = table && table.releases;
  if (!releases || typeof releases !== 'object' || Array.isArray(releases)) {
    throw new Error(`${file} has no "releases" object`);
  }
  for (const [version, assets] of Object.entries(releases)) {
    if (!assets || typeof assets !== 'object' || Array.isArray(assets)) {
      throw new Error(`${file}: release ${version} is not an object of asset digests`);
    }
    for (const [asset, digest] of Object.entries(assets)) {
      if (typeof digest !== 'string' || !/^[0-9a-f]{64}$/.test(digest)) {
        throw new Error(`${file}: ${version} ${asset} is not a lower-case SHA-256 hex digest`);
      }
    }
  }
  return table;
}

/** The pinned SHA-256 of `asset` in release `version`, or null when none is pinned. */
function pinnedDigest(table, version, asset) {
  const assets = Object.prototype.hasOwnProperty.call(table.releases, version) ? table.releases[version] : null;
  if (!assets || !Object.prototype.hasOwnProperty.call(assets, asset)) return null;
  return assets[asset];
}

/** Where a downloaded release binary is kept between jobs on the same runner. */
function toolCacheDir(toolCacheRoot, version, arch) {
  return path.join(toolCacheRoot, 'nixbucket', version, arch);
}

function isExecutableFile(file) {
  try {
    if (!fs.statSync(file).isFile()) return false;
    fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** The first executable `name` on a PATH string, or null. */
function findOnPath(name, pathVar) {
  for (const dir of (pathVar || '').split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    if (isExecutableFile(candidate)) return candidate;
  }
  return null;
}

/** The exit code to report for a child that exited with `code` or died of `signal`. */
function exitCodeOf(code, signal) {
  if (code !== null && code !== undefined) return code;
  const number = signal ? os.constants.signals[signal] : undefined;
  return number ? 128 + number : 1;
}

/** A release binary does not match its pinned digest: never fall back quietly. */
class ChecksumError extends Error {}

/** The binary `post` is to run is not the one `main` ran. */
class BinaryChangedError extends Error {}

class HttpStatusError extends Error {
  constructor(url, status) {
    super(`GET ${url} answered HTTP ${status}`);
    this.status = status;
  }
}

/** GET a URL into memory, following redirects but never from https to http. */
function httpGet(url, redirectsLeft = 5) {
  return new Promise((resolve, reject) => {
    const parsed = new URL(url);
    const client = parsed.protocol === 'https:' ? https : parsed.protocol === 'http:' ? http : null;
    if (!client) {
      reject(new Error(`cannot download ${url}: only http and https are supported`));
      return;
    }
    const request = client.get(parsed, { headers: { 'user-agent': 'nixbucket-action' } }, (response) => {
      const status = response.statusCode || 0;
      if (status >= 300 && status < 400 && response.headers.location) {
        response.resume();
        const next = new URL(response.headers.location, parsed);
        if (redirectsLeft <= 0) {
          reject(new Error(`too many redirects fetching ${url}`));
        } else if (parsed.protocol === 'https:' && next.protocol !== 'https:') {
          reject(new Error(`refusing a redirect from ${url} to a plain-http address`));
        } else {
          httpGet(next.href, redirectsLeft - 1).then(resolve, reject);
        }
        return;
      }
      if (status !== 200) {
        response.resume();
        reject(new HttpStatusError(url, status));
        return;
      }
      const chunks = [];
      response.on('data', (chunk) => chunks.push(chunk));
      response.on('end', () => resolve(Buffer.concat(chunks)));
      response.on('error', reject);
    });
    request.setTimeout(120_000, () => request.destroy(new Error(`timed out fetching ${url}`)));
    request.on('error', reject);
  });
}

function sha256Hex(bytes) {
  return crypto.createHash('sha256').update(bytes).digest('hex');
}

/**
 * Download a release binary into `dir`, checking it against the `expected`
 * SHA-256 before the file becomes executable. Returns the binary's path, or
 * null when the release or the asset does not exist. A digest that does not
 * match is an error, never a reason to fall back quietly.
 */
async function downloadVerified(url, expected, dir) {
  let bytes;
  try {
    bytes = await httpGet(url);
  } catch (err) {
    if (err instanceof HttpStatusError && err.status === 404) return null;
    throw err;
  }
  const actual = sha256Hex(bytes);
  if (actual !== expected) {
    throw new ChecksumError(
      `${url} has SHA-256 ${actual}, but this action pins ${expected} for it ` +
        `(action/release-digests.json); it is not run`,
    );
  }
  fs.mkdirSync(dir, { recursive: true });
  const binary = path.join(dir, 'nixbucket');
  // Write beside the final name and rename, so a concurrent job on the same
  // runner never sees a half-written binary.
  const partial = `${binary}.${process.pid}.partial`;
  fs.writeFileSync(partial, bytes, { mode: 0o755 });
  fs.renameSync(partial, binary);
  return { binary, bytes };
}

/**
 * The binary cached in `dir` and the bytes read from it, if their SHA-256 is
 * still the pinned one, or null. The tool cache outlives the job and may be
 * shared by other jobs on a self-hosted runner, so a digest recorded there
 * would prove nothing, and the file may change once checked: what runs is a
 * copy of the bytes checked here (stageBinary).
 */
function cachedBinary(dir, expected) {
  const binary = path.join(dir, 'nixbucket');
  try {
    if (!isExecutableFile(binary)) return null;
    const bytes = fs.readFileSync(binary);
    if (sha256Hex(bytes) === expected) return { binary, bytes };
  } catch {
    // Not cached, or unreadable: download it again.
  }
  return null;
}

/**
 * Copies the binary `main` is about to run into a fresh directory only this
 * user can enter (mkdtemp, 0700) under RUNNER_TEMP, and returns the copy and
 * its SHA-256. `post` runs this copy, not the original: the job's build may
 * rebuild or remove the original (a target/release/nixbucket, a tool cache).
 * `checked`, when given, are the bytes whose digest was checked against a pin:
 * those are staged, never the file read again, which another user of a shared
 * tool cache could have swapped in between.
 */
function stageBinary(binary, env, checked = null) {
  const bytes = checked || fs.readFileSync(binary);
  const base = env.RUNNER_TEMP || os.tmpdir();
  fs.mkdirSync(base, { recursive: true });
  const dir = fs.mkdtempSync(path.join(base, 'nixbucket-bin-'));
  const staged = path.join(dir, 'nixbucket');
  // Read-only: only a deliberate chmod, not a stray write, can change it.
  fs.writeFileSync(staged, bytes, { mode: 0o500, flag: 'wx' });
  return { binary: staged, digest: sha256Hex(bytes) };
}

/**
 * Throws a BinaryChangedError unless the SHA-256 of `binary` is `expected`.
 * Called right before the binary is started, with nothing asynchronous in
 * between: spawn() forks and execs before it returns.
 */
function checkDigest(binary, expected) {
  let actual;
  try {
    actual = sha256Hex(fs.readFileSync(binary));
  } catch (err) {
    throw new BinaryChangedError(`${binary} cannot be read (${err.code || err.message})`);
  }
  if (actual !== expected) {
    throw new BinaryChangedError(`${binary} has SHA-256 ${actual}, but the main step ran ${expected}`);
  }
}

/** Removes a copy made by stageBinary, and its directory; anything else is left alone. */
function removeStaged(binary) {
  const dir = path.dirname(binary);
  if (!path.basename(dir).startsWith('nixbucket-bin-')) return;
  try {
    fs.rmSync(binary, { force: true });
    fs.rmdirSync(dir);
  } catch {
    // RUNNER_TEMP is emptied when the job ends anyway.
  }
}

/** Workflow-command logging; data is escaped so it cannot end the command early. */
function escapeData(text) {
  return String(text).replace(/%/g, '%25').replace(/\r/g, '%0D').replace(/\n/g, '%0A');
}

const log = {
  info: (message) => process.stdout.write(`${message}${os.EOL}`),
  debug: (message) => process.stdout.write(`::debug::${escapeData(message)}${os.EOL}`),
  notice: (message) => process.stdout.write(`::notice::${escapeData(message)}${os.EOL}`),
  warning: (message) => process.stdout.write(`::warning::${escapeData(message)}${os.EOL}`),
  error: (message) => process.stdout.write(`::error::${escapeData(message)}${os.EOL}`),
};

/** Append `name=value` to the GITHUB_STATE file, which the post step reads as STATE_<name>. */
function saveState(env, name, value) {
  if (!env.GITHUB_STATE || /[\r\n]/.test(value)) return;
  fs.appendFileSync(env.GITHUB_STATE, `${name}=${value}${os.EOL}`);
}

function buildFromSource(env, version) {
  const cargo = findOnPath('cargo', env.PATH);
  if (!cargo) {
    throw new Error(
      'no nixbucket binary: none given in the `binary` input, none on PATH, no release ' +
        `binary for v${version} whose digest this action pins, and no cargo to build one ` +
        "from the action's source",
    );
  }
  const root = path.join(env.RUNNER_TEMP || os.tmpdir(), 'nixbucket-from-source', version);
  log.info(`::group::Building nixbucket ${version} from the action's source with cargo`);
  const result = spawnSync(cargo, ['install', '--locked', '--path', ACTION_DIR, '--root', root], {
    stdio: 'inherit',
    env,
  });
  log.info('::endgroup::');
  if (result.error) throw new Error(`could not run cargo: ${result.error.message}`);
  if (result.status !== 0) {
    throw new Error(`cargo install --path ${ACTION_DIR} failed with exit code ${exitCodeOf(result.status, result.signal)}`);
  }
  return path.join(root, 'bin', 'nixbucket');
}

/**
 * Find the binary for `main` to run, in the order the README promises: the
 * `binary` input, `nixbucket` on PATH, the release binary of this action's
 * version if its digest is pinned (cached in the runner's tool cache), and
 * last a build from the action's own source. In tests, `options` stand in
 * for the runner's platform and arch, and `options.digestsFile` for
 * action/release-digests.json.
 */
async function resolveBinary(env = process.env, options = {}) {
  return (await resolveChecked(env, options)).binary;
}

/**
 * resolveBinary, with the bytes whose SHA-256 was checked against a pin when
 * the binary is a release one (`bytes`, else null): runPhase stages those.
 */
async function resolveChecked(env = process.env, options = {}) {
  const { platform = process.platform, arch = process.arch } = options;
  if (platform !== 'linux' && platform !== 'darwin') {
    throw new Error(`nixbucket runs on Linux and macOS runners; this one is ${platform}`);
  }
  const explicit = (env.INPUT_BINARY || '').trim();
  if (explicit) {
    const binary = path.resolve(env.GITHUB_WORKSPACE || process.cwd(), explicit);
    if (!isExecutableFile(binary)) {
      throw new Error(`the binary input names ${binary}, which is not an executable file`);
    }
    return { binary, bytes: null };
  }
  const onPath = findOnPath('nixbucket', env.PATH);
  if (onPath) {
    log.debug(`using nixbucket from PATH: ${onPath}`);
    return { binary: onPath, bytes: null };
  }

  const version = cargoPackageVersion(fs.readFileSync(path.join(ACTION_DIR, 'Cargo.toml'), 'utf8'));
  const release = releaseFor({ actionRepository: env.GITHUB_ACTION_REPOSITORY, version });
  if (release) {
    const asset = assetName(platform, arch);
    const expected = pinnedDigest(loadReleaseDigests(options.digestsFile), version, asset);
    if (!expected) {
      log.notice(
        `this action pins no SHA-256 for ${asset} of v${version} in action/release-digests.json, ` +
          'so the release binary is not downloaded; building nixbucket from source',
      );
      return { binary: buildFromSource(env, version), bytes: null };
    }
    const dir = toolCacheDir(env.RUNNER_TOOL_CACHE || path.join(os.tmpdir(), 'nixbucket-tool-cache'), version, arch);
    const cached = cachedBinary(dir, expected);
    if (cached) {
      log.debug(`using the cached release binary ${cached.binary}`);
      return cached;
    }
    const url = releaseAssetUrl(env.GITHUB_SERVER_URL, release, asset);
    try {
      const downloaded = await downloadVerified(url, expected, dir);
      if (downloaded) {
        log.info(`Downloaded ${asset} from release ${release.tag} of ${release.repository} (SHA-256 as pinned)`);
        return downloaded;
      }
      log.notice(`release ${release.tag} of ${release.repository} has no ${asset}; building nixbucket from source`);
    } catch (err) {
      if (err instanceof ChecksumError) throw err;
      log.warning(`could not download ${url}: ${err.message}; building nixbucket from source`);
    }
  }
  return { binary: buildFromSource(env, version), bytes: null };
}

/**
 * The binary `post` runs: the copy `main` ran, provided its SHA-256 is still
 * the one `main` recorded. Never another binary: between the two steps the
 * job's build ran as the same user and could have put one anywhere, and post
 * holds the signing key. Returns null when `main` started no binary.
 */
function binaryFromMain(env) {
  const binary = env[`STATE_${BINARY_STATE}`];
  const digest = env[`STATE_${DIGEST_STATE}`];
  if (!binary || !digest) return null;
  return { binary, digest };
}

/**
 * Run one phase of the action: `main` finds the binary and runs a private
 * copy of it, `post` runs that same copy if its SHA-256 has not changed. The
 * step is handed over to `nixbucket github-action <phase>` with the
 * environment as GitHub set it (INPUT_*, GITHUB_STATE, GITHUB_OUTPUT, …). The
 * step's exit code is the binary's: it is set as process.exitCode, and the
 * returned promise resolves to it once the binary has exited, so that a
 * caller awaiting the step knows it is over. `options` go to resolveBinary.
 */
async function runPhase(phase, env = process.env, options = {}) {
  let run;
  if (phase === 'post') {
    run = binaryFromMain(env);
    if (!run) {
      log.warning('nixbucket: nothing pushed: the main step started no nixbucket binary, so the post step runs none');
      process.exitCode = 0;
      return 0;
    }
  } else {
    try {
      const resolved = await resolveChecked(env, options);
      run = stageBinary(resolved.binary, env, resolved.bytes);
    } catch (err) {
      log.error(`nixbucket: ${err.message}`);
      process.exitCode = 1;
      return 1;
    }
    saveState(env, BINARY_STATE, run.binary);
    saveState(env, DIGEST_STATE, run.digest);
  }
  const { binary, digest } = run;

  return new Promise((resolve) => {
    // Post's last look at the bytes before exec: from here to spawn() nothing
    // else runs in this process. (Main hashed the bytes it just copied.)
    try {
      if (phase === 'post') checkDigest(binary, digest);
    } catch (err) {
      log.error(
        `nixbucket: refusing to run ${binary} in the post step: ${err.message}. ` +
          'Something changed it after the main step; it is not started and gets no signing key',
      );
      process.exitCode = 1;
      resolve(1);
      return;
    }
    const child = spawn(binary, ['github-action', phase], { stdio: 'inherit', env });
    // A cancelled job signals this process; the binary must hear it too, to
    // abort its uploads cleanly instead of being orphaned.
    const forward = (signal) => child.kill(signal);
    process.on('SIGINT', forward);
    process.on('SIGTERM', forward);
    let finished = false;
    const finish = (code) => {
      if (finished) return;
      finished = true;
      process.removeListener('SIGINT', forward);
      process.removeListener('SIGTERM', forward);
      if (phase === 'post') removeStaged(binary);
      process.exitCode = code;
      resolve(code);
    };
    child.on('error', (err) => {
      // Only a binary that never started ends the step here; any other error
      // (a failed signal) is followed by the child's own exit.
      if (child.pid === undefined) {
        log.error(`nixbucket: could not start ${binary}: ${err.message}`);
        finish(1);
      } else {
        log.warning(`nixbucket: ${err.message}`);
      }
    });
    child.on('exit', (code, signal) => finish(exitCodeOf(code, signal)));
  });
}

module.exports = {
  BINARY_STATE,
  BinaryChangedError,
  ChecksumError,
  DIGEST_STATE,
  assetName,
  cargoPackageVersion,
  checkDigest,
  downloadVerified,
  escapeData,
  exitCodeOf,
  findOnPath,
  loadReleaseDigests,
  pinnedDigest,
  releaseAssetUrl,
  releaseFor,
  resolveBinary,
  runPhase,
  stageBinary,
  targetTriple,
  toolCacheDir,
};
