/* Fuzzes the inbox replication record decoder (inboxsrv/oplog.c) with arbitrary bytes, as
 * a replica reads them from another server. A record that decodes must re-encode
 * (inbox_oplog_size/encode agree) to a record that decodes to the same op with the same
 * stored seqs, and encoding that again must give the same bytes; every decode, failed or
 * not, is finished with inbox_oplog_fini (sanitizers catch leaks and overreads). Seeds:
 * tests/fuzz/corpus/oplog_fuzz/, one primary-written record of each kind. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inboxsrv/oplog.h"
#include "sp_error.h"
#include "tests/lib/oplog_cmp.h"

static void
fail(const char *what)
{
	fprintf(stderr, "oplog_fuzz: %s\n", what);
	abort();
}

/* Encodes rec->op into a fresh buffer of exactly its size; *len is that size. */
static uint8_t *
reencode(const inbox_oplog_rec *rec, size_t *len)
{
	size_t n = inbox_oplog_size(&rec->op);
	if (n == 0)
		fail("a decoded op has no size");
	uint8_t *p = malloc(n);
	if (!p)
		abort();
	if (inbox_oplog_encode(&rec->op, p, n - 1) != SP_ETOOBIG)
		fail("encode wrote past a short buffer");
	long w = inbox_oplog_encode(&rec->op, p, n);
	if (w < 0 || (size_t)w != n)
		fail("encode and size disagree");
	*len = n;
	return p;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	inbox_oplog_rec a, b;
	int rc = inbox_oplog_decode(data, size, &a);
	if (rc != SP_OK) {
		if (rc != SP_ETRUNC && rc != SP_EMALFORMED && rc != SP_ETOOBIG && rc != SP_ENOMEM)
			fail("decode returned an undocumented error");
		if (a.targets || a.outcome || a.seqs || a.list)
			fail("a failed decode kept its arrays");
		inbox_oplog_fini(&a);
		return 0;
	}
	if (a.op.lsn == 0 || a.op.ts == 0)
		fail("decoded lsn or ts 0");

	size_t n1, n2;
	uint8_t *p1 = reencode(&a, &n1);
	if (inbox_oplog_decode(p1, n1, &b) != SP_OK)
		fail("a re-encoded record does not decode");
	if (!oplog_cmp_op(&a.op, &b.op, true))
		fail("a re-encoded record decodes to another op");
	if (a.op.kind == INBOX_OP_APPEND) {
		/* Encoding a decoded (not applied) op records every target as stored, with the seq
		 * apply would be given: the recorded seq of a stored target, else 0. */
		for (uint32_t i = 0; i < a.op.append.ntargets; i++) {
			if (a.outcome[i] > 2)
				fail("outcome past 2 decoded");
			if (a.outcome[i] == 0 && a.op.append.targets[i].seq != a.seqs[i])
				fail("a stored target lost its seq");
			if (a.outcome[i] != 0 && a.op.append.targets[i].seq != 0)
				fail("a dup or full target is given a seq to check");
			if (b.seqs[i] != a.op.append.targets[i].seq)
				fail("a re-encoded target has another seq");
		}
	}
	uint8_t *p2 = reencode(&b, &n2);
	if (n1 != n2 || memcmp(p1, p2, n1) != 0)
		fail("encoding is not stable");
	/* The input itself re-encodes to the same length: only outcomes and non-stored seqs
	 * may differ. */
	if (n1 != size)
		fail("a re-encoded record has another length");
	inbox_oplog_fini(&b);
	inbox_oplog_fini(&a);
	free(p1);
	free(p2);
	return 0;
}
