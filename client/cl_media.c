/*
 * Media: a file is encrypted with a fresh key in 64 KiB pieces (libsodium secretstream,
 * XChaCha20-Poly1305: constant memory, truncation detected by the final tag) into a file
 * in the home; the SHA-256 of that ciphertext is the digest the recipient checks. Upload
 * and download go in chunks by offset, so both resume after a lost connection.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client/cl_internal.h"
#include "sp_error.h"

#define PIECE 65536
#define SS_HDR crypto_secretstream_xchacha20poly1305_HEADERBYTES
#define SS_ABYTES crypto_secretstream_xchacha20poly1305_ABYTES
#define MEDIA_MAX (100ull * 1024 * 1024) /* the shards' default blob limit */

int
cl_media_encrypt_file(const char *path, const char *enc_path, cl_media *m)
{
	FILE *in = fopen(path, "rb"), *out = NULL;
	uint8_t *pt = malloc(PIECE), *ct = malloc(PIECE + SS_ABYTES), hdr[SS_HDR];
	crypto_secretstream_xchacha20poly1305_state st;
	crypto_hash_sha256_state h;
	int rc = SP_OK;
	struct stat sb;
	if (!in || fstat(fileno(in), &sb) || !S_ISREG(sb.st_mode)) {
		if (in && !S_ISREG(sb.st_mode))
			errno = EISDIR;
		rc = SP_EIO;
		goto out;
	}
	if ((uint64_t)sb.st_size > MEDIA_MAX - (MEDIA_MAX / PIECE + 1) * SS_ABYTES - SS_HDR) {
		rc = SP_ETOOBIG;
		goto out;
	}
	if (!pt || !ct) {
		rc = SP_ENOMEM;
		goto out;
	}
	if (!(out = fopen(enc_path, "wb"))) {
		rc = SP_EIO;
		goto out;
	}
	crypto_secretstream_xchacha20poly1305_keygen(m->key);
	crypto_secretstream_xchacha20poly1305_init_push(&st, hdr, m->key);
	crypto_hash_sha256_init(&h);
	crypto_hash_sha256_update(&h, hdr, sizeof(hdr));
	m->size = sizeof(hdr);
	m->plain_size = 0;
	if (fwrite(hdr, 1, sizeof(hdr), out) != sizeof(hdr)) {
		rc = SP_EIO;
		goto out;
	}
	for (;;) {
		size_t n = fread(pt, 1, PIECE, in);
		if (ferror(in)) {
			rc = SP_EIO;
			break;
		}
		bool last = feof(in) != 0;
		unsigned long long clen;
		crypto_secretstream_xchacha20poly1305_push(&st, ct, &clen, pt, n, NULL, 0,
							   last ? crypto_secretstream_xchacha20poly1305_TAG_FINAL : 0);
		crypto_hash_sha256_update(&h, ct, clen);
		if (fwrite(ct, 1, clen, out) != clen) {
			rc = SP_EIO;
			break;
		}
		m->size += clen;
		m->plain_size += n;
		if (last)
			break;
	}
	crypto_hash_sha256_final(&h, m->digest);
	if (rc == SP_OK && (fflush(out) || fsync(fileno(out))))
		rc = SP_EIO;
out:
	if (in)
		fclose(in);
	if (out && fclose(out) && rc == SP_OK)
		rc = SP_EIO;
	if (rc && out)
		unlink(enc_path);
	if (pt)
		sodium_memzero(pt, PIECE);
	free(pt);
	free(ct);
	sodium_memzero(&st, sizeof(st));
	return rc;
}

static int
digest_file(const char *path, uint8_t digest[32], uint64_t *size)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = malloc(PIECE);
	crypto_hash_sha256_state h;
	int rc = SP_OK;
	if (!f || !buf) {
		rc = f ? SP_ENOMEM : SP_EIO;
		goto out;
	}
	crypto_hash_sha256_init(&h);
	*size = 0;
	size_t n;
	while ((n = fread(buf, 1, PIECE, f)) > 0) {
		crypto_hash_sha256_update(&h, buf, n);
		*size += n;
	}
	if (ferror(f))
		rc = SP_EIO;
	crypto_hash_sha256_final(&h, digest);
out:
	if (f)
		fclose(f);
	free(buf);
	return rc;
}

int
cl_media_decrypt_file(const char *enc_path, const char *out_path, const cl_media *m)
{
	uint8_t digest[32], hdr[SS_HDR];
	uint64_t size = 0;
	int rc = digest_file(enc_path, digest, &size);
	if (rc)
		return rc;
	if (size != m->size || sodium_memcmp(digest, m->digest, 32) != 0)
		return SP_EDIGEST;
	FILE *in = fopen(enc_path, "rb"), *out = fopen(out_path, "wb");
	uint8_t *ct = malloc(PIECE + SS_ABYTES), *pt = malloc(PIECE);
	crypto_secretstream_xchacha20poly1305_state st;
	bool final = false;
	if (!in || !out || !ct || !pt) {
		rc = !ct || !pt ? SP_ENOMEM : SP_EIO;
		goto out;
	}
	if (fread(hdr, 1, sizeof(hdr), in) != sizeof(hdr) ||
	    crypto_secretstream_xchacha20poly1305_init_pull(&st, hdr, m->key) != 0) {
		rc = SP_ECRYPTO;
		goto out;
	}
	while (!final) {
		size_t n = fread(ct, 1, PIECE + SS_ABYTES, in);
		unsigned long long plen;
		unsigned char tag;
		if (n < SS_ABYTES ||
		    crypto_secretstream_xchacha20poly1305_pull(&st, pt, &plen, &tag, ct, n, NULL, 0) != 0) {
			rc = SP_ECRYPTO;
			break;
		}
		final = tag == crypto_secretstream_xchacha20poly1305_TAG_FINAL;
		if (fwrite(pt, 1, plen, out) != plen) {
			rc = SP_EIO;
			break;
		}
	}
	if (rc == SP_OK && fgetc(in) != EOF)
		rc = SP_ECRYPTO; /* bytes after the final piece */
out:
	if (in)
		fclose(in);
	if (out && fclose(out) && rc == SP_OK)
		rc = SP_EIO;
	if (rc)
		unlink(out_path);
	if (pt)
		sodium_memzero(pt, PIECE);
	free(pt);
	free(ct);
	sodium_memzero(&st, sizeof(st));
	return rc;
}

/* MEDIA_PUT of bytes at offset; *have is what the shard holds after it. */
static int
put(sealpost *sp, const cl_media *m, uint64_t off, const uint8_t *p, size_t n, uint64_t *have)
{
	sp_frame q, r;
	sp_frame_init(&q, SP_T_MEDIA_PUT, 0, false);
	sp_frame_set_bin(&q, SP_F_BLOB_ID, m->blob_id, 16);
	sp_frame_set_u64(&q, SP_F_OFFSET, off);
	sp_frame_set_bin(&q, SP_F_BYTES, p, n);
	int rc = cl_call_want(sp, &q, SP_T_BLOB_STORED, &r);
	if (rc)
		return rc;
	*have = sp_frame_u64(&r, SP_F_SIZE);
	sp_frame_fini(&r);
	return SP_OK;
}

/* One pass over the connection; returns a network error to be retried by the caller. */
static int
upload_pass(sealpost *sp, FILE *f, uint8_t *buf, const cl_media *m, sealpost_progress_cb cb, void *arg)
{
	uint64_t have = 0;
	int rc = put(sp, m, 0, buf, 0, &have); /* an empty put tells how much is stored */
	while (rc == SP_OK && have < m->size) {
		if (have > m->size)
			return cl_fail(sp, SP_ERANGE, SEALPOST_ERR_SERVER, "the shard holds more than the blob");
		if (fseeko(f, (off_t)have, SEEK_SET))
			return cl_fail(sp, SP_EIO, SEALPOST_ERR_OTHER, "media file: %s", strerror(errno));
		size_t want = m->size - have < CL_CHUNK ? (size_t)(m->size - have) : CL_CHUNK;
		if (fread(buf, 1, want, f) != want)
			return cl_fail(sp, SP_EIO, SEALPOST_ERR_OTHER, "media file shorter than recorded");
		uint64_t before = have;
		if ((rc = put(sp, m, have, buf, want, &have)))
			break;
		if (have <= before)
			return cl_fail(sp, SP_EPROTO, SEALPOST_ERR_SERVER, "upload makes no progress");
		if (cb)
			cb(have, m->size, arg);
		if (sp->cut_chunks_left > 0 && --sp->cut_chunks_left == 0)
			cl_disconnect(sp); /* testing knob: a lost connection mid-upload */
		if (!sp->conn && have < m->size)
			return cl_fail(sp, SP_ECLOSED, SEALPOST_ERR_NET, "connection lost during upload");
	}
	return rc;
}

int
cl_media_upload(sealpost *sp, const char *enc_path, const cl_media *m, const uint64_t *devices, size_t ndev,
		sealpost_progress_cb cb, void *arg)
{
	FILE *f = fopen(enc_path, "rb");
	uint8_t *buf = malloc(CL_CHUNK);
	int rc = SP_OK;
	if (!f || !buf) {
		if (f)
			fclose(f);
		free(buf);
		return cl_fail(sp, f ? SP_ENOMEM : SP_EIO, SEALPOST_ERR_OTHER, "%s: %s", enc_path,
			       f ? "out of memory" : strerror(errno));
	}
	/* A lost connection resumes from what the shard has; a few reconnects per upload. */
	for (int tries = 0; tries < 5; tries++) {
		if ((rc = cl_online(sp, cl_attempts(sp))) == SP_OK && (rc = upload_pass(sp, f, buf, m, cb, arg)) == SP_OK)
			break;
		if (sp->errclass != SEALPOST_ERR_NET)
			break;
	}
	fclose(f);
	free(buf);
	if (rc)
		return rc;
	sp_frame q, r;
	sp_frame_init(&q, SP_T_MEDIA_DONE, 0, false);
	sp_frame_set_bin(&q, SP_F_BLOB_ID, m->blob_id, 16);
	sp_frame_set_u64(&q, SP_F_SIZE, m->size);
	sp_frame_set_bin(&q, SP_F_SHA256, m->digest, 32);
	sp_frame_set_u64s(&q, SP_F_DEVICES, devices, (uint32_t)ndev);
	if ((rc = cl_call(sp, &q, &r)))
		return rc;
	sp_frame_fini(&r);
	return SP_OK;
}

int
cl_media_download(sealpost *sp, const cl_media *m, const char *enc_path)
{
	if (m->size > MEDIA_MAX)
		return cl_fail(sp, SP_ETOOBIG, SEALPOST_ERR_CRYPTO, "media descriptor too large");
	FILE *f = fopen(enc_path, "ab");
	if (!f)
		return cl_fail(sp, SP_EIO, SEALPOST_ERR_OTHER, "%s: %s", enc_path, strerror(errno));
	uint64_t off = (uint64_t)ftello(f);
	int rc = SP_OK;
	while (off < m->size && rc == SP_OK) {
		sp_frame q, r;
		uint64_t want = m->size - off < CL_CHUNK ? m->size - off : CL_CHUNK;
		sp_frame_init(&q, SP_T_MEDIA_GET, 0, false);
		sp_frame_set_bin(&q, SP_F_BLOB_ID, m->blob_id, 16);
		sp_frame_set_u64(&q, SP_F_OFFSET, off);
		sp_frame_set_u64(&q, SP_F_LEN, want);
		if ((rc = cl_call_want(sp, &q, SP_T_MEDIA_DATA, &r)))
			break;
		sp_bin b = sp_frame_bin(&r, SP_F_BYTES);
		if (sp_frame_u64(&r, SP_F_OFFSET) != off || b.len == 0 || b.len > want)
			rc = cl_fail(sp, SP_EPROTO, SEALPOST_ERR_SERVER, "bad MEDIA_DATA");
		else if (fwrite(b.p, 1, b.len, f) != b.len)
			rc = cl_fail(sp, SP_EIO, SEALPOST_ERR_OTHER, "%s: %s", enc_path, strerror(errno));
		else
			off += b.len;
		sp_frame_fini(&r);
	}
	if (fclose(f) && rc == SP_OK)
		rc = cl_fail(sp, SP_EIO, SEALPOST_ERR_OTHER, "%s: %s", enc_path, strerror(errno));
	return rc;
}
