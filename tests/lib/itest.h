/*
 * Integration-test support: a whole cluster of real processes started by
 * scripts/devcluster.sh in a temp dir on random loopback ports, and test users that
 * register and log in through the real TLS protocol with the client connection code.
 */
#ifndef ITEST_H
#define ITEST_H

#include <stdbool.h>
#include <stdint.h>

#include <sodium.h>

#include "client/spc_conn.h"
#include "sp_frame.h"

typedef struct itest_cluster {
	char dir[128];
	int base;
	char ca[256];
	char router[64];
	int conn_port[2];
	char otp_dir[256];
	char redis[64];
} itest_cluster;

typedef struct itest_user {
	char phone[32];
	uint64_t user, device;
	uint8_t auth_pk[crypto_sign_PUBLICKEYBYTES], auth_sk[crypto_sign_SECRETKEYBYTES];
	uint8_t ik[33];
	spc_conn *conn;
	uint64_t acked; /* highest inbox seq acknowledged */
} itest_user;

/* Starts a cluster (aborts the test program on failure). */
void itest_cluster_up(itest_cluster *c);
/* Stops it and removes its directory. */
void itest_cluster_down(itest_cluster *c);
/* Sends `sig` to a cluster process by name (redis, router, keysrv, inbox-N, connsrv-N). */
void itest_signal(itest_cluster *c, const char *name, int sig);
/* Starts a stopped process again with the same configuration; waits for its port. */
void itest_restart(itest_cluster *c, const char *name);
/* Runs scripts/devcluster.sh with `args` (e.g. "drain connsrv-1 router-b") on the
 * cluster; returns its exit status. */
int itest_devcluster(itest_cluster *c, const char *args);
/* Runs a shell command with the cluster's env sourced; returns its exit status. */
int itest_sh(itest_cluster *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Opens a connection to connsrv `which` (0 or 1). */
spc_conn *itest_connect(itest_cluster *c, int which);
/* REGISTER + VERIFY through connsrv `which`: a new account with one device. */
void itest_register(itest_cluster *c, int which, itest_user *u, const char *phone);
/* Connects u->conn to connsrv `which` and logs in (last_seq = u->acked). Returns the code. */
int itest_login(itest_cluster *c, int which, itest_user *u);
void itest_logout(itest_user *u);

/* Sends a 1:1 message to every device in `devices` (the recipient's, plus the sender's
 * own others) and waits for its SENT (skipping DELIVER/receipt frames that arrive first,
 * which are kept in the inbox of `u` for later). Returns SP_OK or the error code. */
int itest_send(itest_user *u, uint64_t to_user, const uint64_t *devices, size_t n,
	       const uint8_t msg_id[16], const void *body, size_t len);

/* Waits up to timeout_ms for the next frame of type `type` on u->conn (others are
 * skipped). The frame must be finalised by the caller. */
int itest_wait(itest_user *u, unsigned type, int timeout_ms, sp_frame *f);

/* ACK upto seq. */
int itest_ack(itest_user *u, uint64_t upto);

/* A fresh random msg id. */
void itest_msg_id(uint8_t id[16]);

/* Whether the programs run under the sanitizers (make asan sets SP_SANITIZED=1), where
 * each costs several times more: tests may do fewer rounds there. */
bool itest_sanitized(void);

#endif
