/*
 * A real single-member etcd for tests: started on free loopback ports in a temporary data
 * dir, stopped by its PID (only the process this started), its dir removed. It gets SIGKILL
 * if the thread that started it dies (a test killed before its cleanup ran).
 */
#ifndef ETCD_PROC_H
#define ETCD_PROC_H

#include <stdbool.h>
#include <sys/types.h>

typedef struct etcd_proc {
	pid_t pid;
	int client_port, peer_port;
	char dir[128];
	char host[48];     /* the address it listens on (127.0.0.1 unless started on another) */
	char endpoint[80]; /* http://<host>:<client_port>, or https:// with TLS */
	/* TLS (etcd_proc_start_tls): the files etcd_proc_make_certs wrote, in `dir`. */
	bool tls;
	char ca[160], client_cert[160], client_key[160];
} etcd_proc;

/* Makes a CA (ca.pem, ca.key) and, signed by it, a certificate and key for each of the
 * NULL-terminated `names` (<name>.pem, <name>.key: CN=name, SAN IP 127.0.0.1 and
 * localhost, usable as server and client) in `dir`, with the openssl command. 0 or -1. */
int etcd_proc_make_certs(const char *dir, const char *const *names);

/* As etcd_proc_start, with etcd serving https only and requiring a client certificate
 * signed by the CA (--client-cert-auth): ca, client_cert and client_key name the files a
 * client presents (the certificate "client"). */
int etcd_proc_start_tls(etcd_proc *p);

/* Starts etcd and waits (up to 15 s) until it serves. Returns 0, or -1 with a message on
 * stderr (no etcd binary, no port, no answer). */
int etcd_proc_start(etcd_proc *p);
/* The same, with the client and peer URLs on `host` (an IPv4 address of the network
 * namespace the caller runs in, e.g. inside a test's own namespace); the ports are picked
 * free in that namespace. */
int etcd_proc_start_on(etcd_proc *p, const char *host);
/* SIGKILLs etcd (if running), then starts it again at once on the same data dir, host and
 * ports, and waits (up to 15 s) until it serves. Returns 0, or -1 with a message on
 * stderr. *down_ms (if not NULL) gets the time from the kill until the new process
 * answered its first health check. */
int etcd_proc_restart(etcd_proc *p, long *down_ms);
/* Sends `sig` to the etcd process (SIGSTOP/SIGCONT for a stall); after SIGSTOP, returns once
 * every thread of it is stopped (at most 2 s). */
void etcd_proc_signal(etcd_proc *p, int sig);
/* SIGTERM, then SIGKILL after 5 s; waits for it and removes its data dir. */
void etcd_proc_stop(etcd_proc *p);

#endif
