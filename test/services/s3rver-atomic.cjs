// s3rver's own command line (same arguments, same "S3rver listening" line), with its filesystem store
// writing objects the way S3 stores them. s3rver 3.7.1's FilesystemStore writes an object's file in
// place and answers a PUT (or an uploaded part) once the bytes have passed its md5 hash, before its file
// holds them all: a GET right after the 200 could read the object empty or cut off (test/cloud/orphans
// failed so in CI), a GET during an overwrite read part of it, and a PUT cut off midway left that part
// as the object. Here each file of an object is written to a temp file beside it, the write stream
// finished, then renamed over its name before the call resolves; a failed write removes its temp file
// and leaves the previous object as it was. Started by test/services/s3.ts; test: s3-store.test.ts.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { Readable, Transform } = require('node:stream');
const { pipeline } = require('node:stream/promises');

// Started as `node s3rver-atomic.cjs <s3rver's bin/s3rver.js> <its arguments>`: the command line still names
// s3rver (tests find its process so), and its bin parses the arguments after its own path as usual.
const bin = process.argv.splice(2, 1)[0];
const s3rver = path.dirname(path.dirname(bin));
const FilesystemStore = require(path.join(s3rver, 'lib/stores/filesystem.js'));
const S3Object = require(path.join(s3rver, 'lib/models/object.js'));
const { pick, pickBy } = require(require.resolve('lodash', { paths: [s3rver] }));

/**
 * Writes `content` (a stream or bytes) to a new temp file beside `file`; its name, size and md5 once written.
 * A temp name does not end in `._S3rver_object`, so no listing shows it.
 */
async function writeTemp(file, content) {
  const temp = `${file}.${crypto.randomBytes(6).toString('hex')}.tmp`;
  const md5 = crypto.createHash('md5');
  let size = 0;
  const count = new Transform({
    transform(chunk, _encoding, done) {
      md5.update(chunk);
      size += chunk.length;
      done(null, chunk);
    },
  });
  const source = Buffer.isBuffer(content) || typeof content === 'string' ? Readable.from([content]) : content;
  try {
    await pipeline(source, count, fs.createWriteStream(temp, { flags: 'wx' }));
  } catch (error) {
    await fs.promises.rm(temp, { force: true });
    throw error;
  }
  return { temp, size, md5: md5.digest('hex') };
}

/** Renames `temp` over `file`, or removes it when that fails. */
async function renameOver(temp, file) {
  try {
    await fs.promises.rename(temp, file);
  } catch (error) {
    await fs.promises.rm(temp, { force: true });
    throw error;
  }
}

/** Runs `first`, then renames `temp` over `file`; `temp` is removed if either fails. */
async function renameAfter(first, temp, file) {
  try {
    await first();
  } catch (error) {
    await fs.promises.rm(temp, { force: true });
    throw error;
  }
  await renameOver(temp, file);
}

/** `file` replaced whole by `content`; its size and md5. */
async function replace(file, content) {
  const written = await writeTemp(file, content);
  await renameOver(written.temp, file);
  return written;
}

FilesystemStore.prototype.putObject = async function (object) {
  const objectPath = this.getResourcePath(object.bucket, object.key, 'object');
  await fs.promises.mkdir(path.dirname(objectPath), { recursive: true });
  const written = await writeTemp(objectPath, object.content);
  // The metadata first: a new object is never found without its own (x-amz-meta-*, md5); during an
  // overwrite the old bytes show the new metadata for that moment (three files, one rename each).
  await renameAfter(
    () => this.putMetadata(object.bucket, object.key, object.metadata, written.md5),
    written.temp,
    objectPath,
  );
  return { size: written.size, md5: written.md5 };
};

// As the original, but each file written whole.
FilesystemStore.prototype.putMetadata = async function (bucket, key, metadata, md5) {
  const json = {
    ...pick(metadata, S3Object.ALLOWED_METADATA),
    ...pickBy(metadata, (_value, name) => name.startsWith('x-amz-meta-')),
  };
  if (md5) await replace(this.getResourcePath(bucket, key, 'object.md5'), md5);
  await replace(this.getResourcePath(bucket, key, 'metadata.json'), JSON.stringify(json, null, 2));
};

// The original stats the object, then opens it: an overwrite renamed in between sent the new bytes
// under the old length (cut off, or a prefix). Read again unless the file opened is the one stat'ed.
const getObject = FilesystemStore.prototype.getObject;
FilesystemStore.prototype.getObject = async function (bucket, key, options) {
  for (;;) {
    const before = await fs.promises.stat(this.getResourcePath(bucket, key, 'object')).catch((error) => {
      if (error.code === 'ENOENT') return null;
      throw error;
    });
    if (!before) return null;
    const object = await getObject.call(this, bucket, key, options);
    if (!object?.content) return object;
    const opened = await new Promise((resolve, reject) =>
      fs.fstat(object.content.fd, (error, stats) => (error ? reject(error) : resolve(stats))),
    );
    if (opened.ino === before.ino) return object;
    object.content.destroy();
  }
};

FilesystemStore.prototype.putPart = async function (bucket, uploadId, partNumber, content) {
  const partPath = path.join(
    this.getResourcePath(bucket, undefined, 'uploads'),
    uploadId,
    String(partNumber),
  );
  await fs.promises.mkdir(path.dirname(partPath), { recursive: true });
  const { size, md5 } = await replace(partPath, content);
  await replace(`${partPath}.md5`, md5);
  return { size, md5 };
};

FilesystemStore.prototype.copyObject = async function (srcBucket, srcKey, destBucket, destKey, replacement) {
  const from = (resource) => this.getResourcePath(srcBucket, srcKey, resource);
  const to = (resource) => this.getResourcePath(destBucket, destKey, resource);
  if (from('object') !== to('object')) {
    await fs.promises.mkdir(path.dirname(to('object')), { recursive: true });
    const written = await writeTemp(to('object'), fs.createReadStream(from('object')));
    await renameAfter(
      async () => {
        if (replacement) await this.putMetadata(destBucket, destKey, replacement, written.md5);
        else
          for (const resource of ['metadata.json', 'object.md5'])
            await replace(to(resource), fs.createReadStream(from(resource)));
      },
      written.temp,
      to('object'),
    );
  } else if (replacement) {
    await this.putMetadata(destBucket, destKey, replacement);
  }
  return this.getMetadata(destBucket, destKey);
};

require(bin);
